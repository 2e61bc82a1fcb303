output "load_balancer_dns_name" {
  description = "Point registry_host at this (an alias or CNAME record)."
  value       = module.berth.load_balancer_dns_name
}

output "autoscaling_group_name" {
  description = "The group to start an instance refresh on after changing the version."
  value       = module.berth.autoscaling_group_name
}
