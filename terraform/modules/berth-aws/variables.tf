variable "name" {
  description = "Name of the deployment: the prefix of every resource's name."
  type        = string
  default     = "berth"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2 to 21 lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags for every resource, next to Name."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "The VPC to deploy into."
  type        = string
}

variable "instance_subnet_ids" {
  description = "Subnets of the instances, the database and Redis: private ones, in at least two availability zones, with a route to S3 and SSM (NAT or VPC endpoints)."
  type        = list(string)
  validation {
    condition     = length(var.instance_subnet_ids) >= 2
    error_message = "instance_subnet_ids: at least two subnets, in different availability zones."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the load balancer: public ones for a registry on the internet, in at least two availability zones."
  type        = list(string)
  validation {
    condition     = length(var.load_balancer_subnet_ids) >= 2
    error_message = "load_balancer_subnet_ids: at least two subnets, in different availability zones."
  }
}

variable "internal" {
  description = "Make the load balancer internal (reachable only from the VPC and what is peered with it)."
  type        = bool
  default     = false
}

variable "allowed_cidr_blocks" {
  description = "Addresses that may reach the load balancer on ports 80 and 443."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ARN of the ACM certificate of the HTTPS listener, for the host of external_url."
  type        = string
}

variable "external_url" {
  description = "URL clients reach the registry at, e.g. https://registry.example.com: the DNS name pointing at the load balancer (an alias record the caller makes)."
  type        = string
  validation {
    condition     = can(regex("^https://[^/]+$", var.external_url))
    error_message = "external_url: https:// and a host, e.g. https://registry.example.com."
  }
}

variable "install" {
  description = "Where the berth binary comes from: a release URL with its SHA-256 (`url`, `sha256`), or a container image (`image`)."
  type = object({
    url    = optional(string)
    sha256 = optional(string)
    image  = optional(string)
  })
}

variable "auth" {
  description = "Authentication: basic or token (Docker token auth, Berth issues the tokens), or none."
  type        = string
  default     = "token"
}

variable "htpasswd_parameter" {
  description = "Name of an SSM SecureString parameter holding the htpasswd file (bcrypt entries), which the caller keeps. Required unless auth is none."
  type        = string
  default     = null
}

variable "ui" {
  description = "Serve the web UI under /ui/ (BERTH_UI); with authentication on, the module keeps its session key in an SSM parameter."
  type        = bool
  default     = true
}

variable "token_key_parameter" {
  description = "Name of an SSM SecureString parameter holding the token signing key (PEM); null makes a P-256 key and keeps it in a parameter of the module's."
  type        = string
  default     = null
}

variable "ami_id" {
  description = "AMI of the instances; null looks up the newest Debian 12 (bookworm) AMI for the architecture."
  type        = string
  default     = null
}

variable "architecture" {
  description = "CPU architecture of the AMI lookup and the instances: x86_64 or arm64."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture: x86_64 or arm64."
  }
}

variable "instance_type" {
  description = "Instance type. Berth peaks near 300 MiB during 8 concurrent 512 MiB pushes; t3.small (2 vCPU, 2 GiB) leaves room."
  type        = string
  default     = "t3.small"
}

variable "root_volume_size" {
  description = "Size of each instance's root volume, in GiB (the OS and the binary; blobs are in S3)."
  type        = number
  default     = 16
}

variable "min_size" {
  description = "Fewest instances."
  type        = number
  default     = 2
}

variable "max_size" {
  description = "Most instances."
  type        = number
  default     = 6
}

variable "scaling" {
  description = "Target tracking: `metric` cpu (average CPU percent) or requests (ALB requests per target per minute), and its `target`."
  type = object({
    metric = string
    target = number
  })
  default = { metric = "cpu", target = 60 }
  validation {
    condition     = contains(["cpu", "requests"], var.scaling.metric)
    error_message = "scaling.metric: cpu or requests."
  }
}

variable "shutdown_timeout" {
  description = "Seconds requests in flight get to finish on stop (BERTH_SHUTDOWN_TIMEOUT); the target group's deregistration delay and systemd's stop timeout are longer."
  type        = number
  default     = 30
}

variable "idle_timeout" {
  description = "Seconds the load balancer keeps a connection with no bytes moving: long, for large layers on slow links."
  type        = number
  default     = 900
  validation {
    condition     = var.idle_timeout >= 60 && var.idle_timeout <= 4000
    error_message = "idle_timeout: 60 to 4000 seconds."
  }
}

variable "bucket_name" {
  description = "Name of the bucket the module makes; null derives one from name and the account."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "KMS key for the bucket's server-side encryption (SSE-KMS); null uses S3-managed keys (SSE-S3)."
  type        = string
  default     = null
}

variable "abort_incomplete_uploads_after_days" {
  description = "Days after which the bucket aborts incomplete multipart uploads (Berth's own janitor usually gets there first)."
  type        = number
  default     = 3
}

variable "bucket_force_destroy" {
  description = "Let terraform destroy delete the bucket with the blobs in it."
  type        = bool
  default     = false
}

variable "database" {
  description = "PostgreSQL: made by the module (`instance_class`, `multi_az`, `allocated_storage`, `engine_version`, `deletion_protection`), or `existing_url_parameter`, the name of an SSM SecureString parameter holding a postgres:// URL."
  type = object({
    existing_url_parameter = optional(string)
    instance_class         = optional(string, "db.t4g.micro")
    multi_az               = optional(bool, false)
    allocated_storage      = optional(number, 20)
    engine_version         = optional(string, "16")
    deletion_protection    = optional(bool, true)
    backup_retention_days  = optional(number, 7)
  })
  default = {}
}

variable "redis" {
  description = "Redis for upload sessions: ElastiCache made by the module, with TLS and an auth token (`node_type`), or `existing_url_parameter`, the name of an SSM SecureString parameter holding a redis:// or rediss:// URL."
  type = object({
    existing_url_parameter = optional(string)
    node_type              = optional(string, "cache.t4g.micro")
    engine_version         = optional(string, "7.1")
  })
  default = {}
}

variable "cloudwatch_logs" {
  description = "Send Berth's log to a CloudWatch log group (the CloudWatch agent on each instance)."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the log."
  type        = number
  default     = 365
}

variable "load_balancer_access_logs" {
  description = "A bucket (and prefix) for the load balancer's access logs, `{ bucket, prefix }`; null for none. The bucket's policy must let Elastic Load Balancing write to it."
  type = object({
    bucket = string
    prefix = optional(string, "berth")
  })
  default = null
}

variable "extra_environment" {
  description = "More Berth settings, as BERTH_* names and values (no secrets)."
  type        = map(string)
  default     = {}
}
