# The scaled shape on AWS: an autoscaling group of Berth instances behind an ALB, blobs in S3,
# metadata in RDS PostgreSQL, upload sessions in ElastiCache Redis. Copy
# terraform.tfvars.example to terraform.tfvars, fill it in, then terraform init && terraform apply.

provider "aws" {
  region = var.region
  default_tags {
    tags = var.tags
  }
}

module "berth" {
  source = "../../modules/berth-aws"

  name                     = var.name
  vpc_id                   = var.vpc_id
  instance_subnet_ids      = var.private_subnet_ids
  load_balancer_subnet_ids = var.public_subnet_ids
  certificate_arn          = var.certificate_arn
  external_url             = "https://${var.registry_host}"
  install                  = var.install
  auth                     = "token"
  htpasswd_parameter       = var.htpasswd_parameter
  database                 = { multi_az = var.multi_az }
  cloudwatch_logs          = true
  tags                     = var.tags
}
