# PostgreSQL (metadata) and Redis (upload sessions), unless the caller passes existing ones.

locals {
  create_database = var.database.existing_url_parameter == null
  create_redis    = var.redis.existing_url_parameter == null
}

resource "aws_db_subnet_group" "berth" {
  count      = local.create_database ? 1 : 0
  name       = var.name
  subnet_ids = var.instance_subnet_ids
  tags       = local.tags
}

resource "random_password" "database" {
  count   = local.create_database ? 1 : 0
  length  = 40
  special = false
}

resource "aws_db_parameter_group" "berth" {
  count  = local.create_database ? 1 : 0
  name   = "${var.name}-postgres"
  family = "postgres${split(".", var.database.engine_version)[0]}"
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  tags = local.tags
}

resource "aws_db_instance" "berth" {
  count                               = local.create_database ? 1 : 0
  identifier                          = var.name
  engine                              = "postgres"
  engine_version                      = var.database.engine_version
  instance_class                      = var.database.instance_class
  allocated_storage                   = var.database.allocated_storage
  max_allocated_storage               = var.database.allocated_storage * 5
  storage_type                        = "gp3"
  storage_encrypted                   = true
  kms_key_id                          = var.kms_key_arn
  multi_az                            = var.database.multi_az
  db_name                             = "berth"
  username                            = "berth"
  password                            = random_password.database[0].result
  db_subnet_group_name                = aws_db_subnet_group.berth[0].name
  parameter_group_name                = aws_db_parameter_group.berth[0].name
  vpc_security_group_ids              = [aws_security_group.data[0].id]
  backup_retention_period             = var.database.backup_retention_days
  deletion_protection                 = var.database.deletion_protection
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-final"
  copy_tags_to_snapshot               = true
  auto_minor_version_upgrade          = true
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = var.kms_key_arn
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql"]
  tags                                = local.tags
}

resource "aws_elasticache_subnet_group" "berth" {
  count      = local.create_redis ? 1 : 0
  name       = var.name
  subnet_ids = var.instance_subnet_ids
  tags       = local.tags
}

resource "random_password" "redis" {
  count   = local.create_redis ? 1 : 0
  length  = 48
  special = false
}

resource "aws_elasticache_replication_group" "berth" {
  count                      = local.create_redis ? 1 : 0
  replication_group_id       = var.name
  description                = "Berth upload sessions"
  engine                     = "redis"
  engine_version             = var.redis.engine_version
  node_type                  = var.redis.node_type
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.berth[0].name
  security_group_ids         = [aws_security_group.data[0].id]
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis[0].result
  auto_minor_version_upgrade = true
  snapshot_retention_limit   = 0
  tags                       = local.tags
}
