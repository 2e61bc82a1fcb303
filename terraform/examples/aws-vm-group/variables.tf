variable "region" {
  description = "AWS region."
  type        = string
}

variable "name" {
  description = "Name of the deployment."
  type        = string
  default     = "berth"
}

variable "registry_host" {
  description = "Host name of the registry, e.g. registry.example.com; certificate_arn must cover it."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the instances, PostgreSQL and Redis (two or more zones)."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer (two or more zones)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for registry_host."
  type        = string
}

variable "install" {
  description = "The berth binary: a release URL and its SHA-256, or an image."
  type = object({
    url    = optional(string)
    sha256 = optional(string)
    image  = optional(string)
  })
}

variable "htpasswd_parameter" {
  description = "SSM SecureString parameter holding the htpasswd file."
  type        = string
}

variable "multi_az" {
  description = "Run PostgreSQL Multi-AZ."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for everything."
  type        = map(string)
  default     = {}
}
