output "load_balancer_dns_name" {
  description = "DNS name of the load balancer: the target of the registry host's alias (or CNAME) record."
  value       = aws_lb.berth.dns_name
}

output "load_balancer_arn" {
  description = "ARN of the load balancer, e.g. to associate a WAF web ACL with it."
  value       = aws_lb.berth.arn
}

output "load_balancer_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = aws_lb.berth.zone_id
}

output "bucket" {
  description = "The bucket of the blobs."
  value       = aws_s3_bucket.blobs.bucket
}

output "autoscaling_group_name" {
  description = "The autoscaling group: start an instance refresh on it to roll a new version out."
  value       = aws_autoscaling_group.berth.name
}

output "instance_role_arn" {
  description = "The instances' IAM role."
  value       = aws_iam_role.berth.arn
}

output "database_endpoint" {
  description = "The PostgreSQL endpoint the module made, or null."
  value       = local.create_database ? aws_db_instance.berth[0].endpoint : null
}

output "redis_endpoint" {
  description = "The Redis primary endpoint the module made, or null."
  value       = local.create_redis ? aws_elasticache_replication_group.berth[0].primary_endpoint_address : null
}

output "security_group_ids" {
  description = "Security groups of the load balancer, the instances and the data stores."
  value = {
    load_balancer = aws_security_group.lb.id
    instances     = aws_security_group.instances.id
    data          = local.create_database || local.create_redis ? aws_security_group.data[0].id : null
  }
}
