# The secrets the instances read at boot (fetch-secrets, with the instance role): SecureString
# parameters. Their values are in the Terraform state too: keep the state encrypted.

resource "aws_ssm_parameter" "database_url" {
  count  = local.create_database ? 1 : 0
  name   = local.parameters.database_url
  type   = "SecureString"
  key_id = var.kms_key_arn
  value  = "postgres://berth:${random_password.database[0].result}@${aws_db_instance.berth[0].endpoint}/berth?sslmode=require"
  tags   = local.tags
}

resource "aws_ssm_parameter" "redis_url" {
  count  = local.create_redis ? 1 : 0
  name   = local.parameters.redis_url
  type   = "SecureString"
  key_id = var.kms_key_arn
  value  = "rediss://:${random_password.redis[0].result}@${aws_elasticache_replication_group.berth[0].primary_endpoint_address}:6379/0"
  tags   = local.tags
}

# One token signing key for every instance: a token one issues, all accept.
resource "tls_private_key" "token" {
  count       = var.auth == "token" && var.token_key_parameter == null ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "aws_ssm_parameter" "token_key" {
  count  = var.auth == "token" && var.token_key_parameter == null ? 1 : 0
  name   = local.parameters.token_key
  type   = "SecureString"
  key_id = var.kms_key_arn
  value  = tls_private_key.token[0].private_key_pem
  tags   = local.tags
}

# One web UI session key for every instance: a sign-in on one holds on all.
resource "random_password" "ui_session" {
  count   = local.parameters.ui_session_key == null ? 0 : 1
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "ui_session_key" {
  count  = local.parameters.ui_session_key == null ? 0 : 1
  name   = local.parameters.ui_session_key
  type   = "SecureString"
  key_id = var.kms_key_arn
  value  = random_password.ui_session[0].result
  tags   = local.tags
}
