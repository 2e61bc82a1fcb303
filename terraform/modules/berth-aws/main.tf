data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# The newest Debian 12 AMI, from Debian's own account, unless one is given.
data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"]
  filter {
    name   = "name"
    values = ["debian-12-${var.architecture == "arm64" ? "arm64" : "amd64"}-*"]
  }
  filter {
    name   = "architecture"
    values = [var.architecture]
  }
}

locals {
  tags        = merge(var.tags, { "app.kubernetes.io/name" = "berth", "berth/deployment" = var.name })
  region      = data.aws_region.current.name
  bucket_name = coalesce(var.bucket_name, "${var.name}-blobs-${data.aws_caller_identity.current.account_id}")
  port        = module.cloud_init.target_port
  # The SSM parameters the instances read at boot: the caller's, or the module's own.
  parameters = {
    database_url = coalesce(var.database.existing_url_parameter, "/${var.name}/database-url")
    redis_url    = coalesce(var.redis.existing_url_parameter, "/${var.name}/redis-url")
    token_key    = var.auth == "token" ? coalesce(var.token_key_parameter, "/${var.name}/token-key") : null
    htpasswd     = var.auth == "none" ? null : var.htpasswd_parameter
    # Sign-ins to the web UI hold on every instance: one key for all.
    ui_session_key = var.auth != "none" && var.ui ? "/${var.name}/ui-session-key" : null
  }
  parameter_arns = [
    for p in values(local.parameters) :
    "arn:${data.aws_partition.current.partition}:ssm:${local.region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(p, "/")}"
    if p != null
  ]
}

module "cloud_init" {
  source = "../berth-cloud-init"

  install          = var.install
  auth             = var.auth
  external_url     = var.external_url
  trust_forwarded  = "x-forwarded"
  trusted_proxies  = 1
  storage          = "s3"
  shutdown_timeout = var.shutdown_timeout
  ui               = var.ui
  s3 = {
    bucket = aws_s3_bucket.blobs.bucket
    region = local.region
  }
  secrets = {
    source         = "ssm"
    region         = local.region
    database_url   = local.parameters.database_url
    redis_url      = local.parameters.redis_url
    token_key      = local.parameters.token_key
    htpasswd       = local.parameters.htpasswd
    ui_session_key = local.parameters.ui_session_key
  }
  cloudwatch_log_group = var.cloudwatch_logs ? aws_cloudwatch_log_group.berth[0].name : ""
  extra_environment    = var.extra_environment
}

resource "aws_cloudwatch_log_group" "berth" {
  count             = var.cloudwatch_logs ? 1 : 0
  name              = "/${var.name}/berth"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
}
