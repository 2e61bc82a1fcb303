# Only the flows Berth needs: clients to the load balancer (80, 443), the load balancer to the
# instances (Berth's port), the instances to PostgreSQL (5432) and Redis (6379). The instances
# reach S3, SSM and CloudWatch over HTTPS.

resource "aws_security_group" "lb" {
  name        = "${var.name}-lb"
  description = "Berth load balancer: HTTPS and the redirect from HTTP"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-lb" })
}

resource "aws_vpc_security_group_ingress_rule" "lb_https" {
  for_each          = toset(var.allowed_cidr_blocks)
  security_group_id = aws_security_group.lb.id
  description       = "HTTPS from clients"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "lb_http" {
  for_each          = toset(var.allowed_cidr_blocks)
  security_group_id = aws_security_group.lb.id
  description       = "HTTP from clients, redirected to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "lb_to_instances" {
  security_group_id            = aws_security_group.lb.id
  description                  = "To Berth on the instances"
  referenced_security_group_id = aws_security_group.instances.id
  ip_protocol                  = "tcp"
  from_port                    = local.port
  to_port                      = local.port
  tags                         = local.tags
}

resource "aws_security_group" "instances" {
  name        = "${var.name}-instances"
  description = "Berth instances: the API from the load balancer only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-instances" })
}

resource "aws_vpc_security_group_ingress_rule" "instances_from_lb" {
  security_group_id            = aws_security_group.instances.id
  description                  = "Berth's API from the load balancer"
  referenced_security_group_id = aws_security_group.lb.id
  ip_protocol                  = "tcp"
  from_port                    = local.port
  to_port                      = local.port
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "instances_https" {
  security_group_id = aws_security_group.instances.id
  description       = "HTTPS to S3, SSM, CloudWatch and the package mirrors"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "instances_http" {
  security_group_id = aws_security_group.instances.id
  description       = "HTTP to the Debian package mirrors at first boot"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "instances_postgres" {
  count                        = local.create_database ? 1 : 0
  security_group_id            = aws_security_group.instances.id
  description                  = "To PostgreSQL"
  referenced_security_group_id = aws_security_group.data[0].id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "instances_redis" {
  count                        = local.create_redis ? 1 : 0
  security_group_id            = aws_security_group.instances.id
  description                  = "To Redis"
  referenced_security_group_id = aws_security_group.data[0].id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  tags                         = local.tags
}

resource "aws_security_group" "data" {
  count       = local.create_database || local.create_redis ? 1 : 0
  name        = "${var.name}-data"
  description = "Berth's PostgreSQL and Redis: from the instances only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-data" })
}

resource "aws_vpc_security_group_ingress_rule" "postgres_from_instances" {
  count                        = local.create_database ? 1 : 0
  security_group_id            = aws_security_group.data[0].id
  description                  = "PostgreSQL from the Berth instances"
  referenced_security_group_id = aws_security_group.instances.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_instances" {
  count                        = local.create_redis ? 1 : 0
  security_group_id            = aws_security_group.data[0].id
  description                  = "Redis from the Berth instances"
  referenced_security_group_id = aws_security_group.instances.id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  tags                         = local.tags
}
