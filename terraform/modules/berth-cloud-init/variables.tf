variable "install" {
  description = "Where the berth binary comes from: a release URL with its SHA-256 (`url`, `sha256`), or a container image to copy it out of (`image`, pulled with podman)."
  type = object({
    url    = optional(string)
    sha256 = optional(string)
    image  = optional(string)
  })
  validation {
    condition     = (var.install.url != null && var.install.sha256 != null) != (var.install.image != null)
    error_message = "install: give either url and sha256, or image."
  }
  validation {
    condition     = var.install.sha256 == null || can(regex("^[0-9a-f]{64}$", var.install.sha256))
    error_message = "install.sha256: 64 lowercase hex digits."
  }
}

variable "listen" {
  description = "Address Berth listens on (BERTH_LISTEN); the load balancer's target port."
  type        = string
  default     = "0.0.0.0:5000"
  validation {
    condition     = can(regex("^[^:]+:[0-9]+$", var.listen))
    error_message = "listen: HOST:PORT, e.g. 0.0.0.0:5000."
  }
}

variable "metrics_listen" {
  description = "Address of the separate metrics listener (BERTH_METRICS_LISTEN); empty for none."
  type        = string
  default     = "0.0.0.0:9090"
}

variable "external_url" {
  description = "URL clients reach the registry at, e.g. https://registry.example.com (BERTH_EXTERNAL_URL): the token realm."
  type        = string
  default     = ""
  validation {
    condition     = var.external_url == "" || can(regex("^https?://[^/]+$", var.external_url))
    error_message = "external_url: scheme and host only, e.g. https://registry.example.com."
  }
}

variable "auth" {
  description = "Authentication: none, basic or token (BERTH_AUTH)."
  type        = string
  default     = "token"
  validation {
    condition     = contains(["none", "basic", "token"], var.auth)
    error_message = "auth: none, basic or token."
  }
}

variable "trust_forwarded" {
  description = "Forwarded headers the load balancer in front sets (BERTH_TRUST_FORWARDED): x-forwarded for an ALB, false with no proxy."
  type        = string
  default     = "x-forwarded"
  validation {
    condition     = contains(["false", "true", "x-forwarded", "forwarded"], var.trust_forwarded)
    error_message = "trust_forwarded: false, true, x-forwarded or forwarded."
  }
}

variable "trusted_proxies" {
  description = "Proxies in front that append to X-Forwarded-For (BERTH_TRUSTED_PROXIES)."
  type        = number
  default     = 1
}

variable "storage" {
  description = "Blob store: filesystem (one VM, on its disk) or s3 (BERTH_STORAGE)."
  type        = string
  default     = "s3"
  validation {
    condition     = contains(["filesystem", "s3"], var.storage)
    error_message = "storage: filesystem or s3."
  }
}

variable "s3" {
  description = "The bucket with storage = s3: `bucket`, `region`, and for stores other than AWS `endpoint` and `force_path_style`; `prefix` of every key; `redirect` blob GETs to presigned URLs."
  type = object({
    bucket           = string
    region           = optional(string, "")
    endpoint         = optional(string, "")
    force_path_style = optional(bool, false)
    prefix           = optional(string, "")
    redirect         = optional(bool, true)
  })
  default = null
}

variable "shutdown_timeout" {
  description = "Seconds requests in flight get to finish on stop (BERTH_SHUTDOWN_TIMEOUT); systemd waits 15 more before it kills."
  type        = number
  default     = 30
}

variable "ui" {
  description = "Serve the web UI under /ui/ (BERTH_UI)."
  type        = bool
  default     = true
}

variable "log_format" {
  description = "Log format: text or json (BERTH_LOG_FORMAT); json for CloudWatch."
  type        = string
  default     = "json"
}

variable "extra_environment" {
  description = "More settings, as BERTH_* names and values (see the configuration reference); no secrets, they are in the user data."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : can(regex("^BERTH_[A-Z0-9_]+$", k))])
    error_message = "extra_environment: names are BERTH_* settings."
  }
}

variable "secrets" {
  description = "Secrets read at boot, never written in the user data: the names of SSM parameters (source = ssm) or Secrets Manager secrets (source = secretsmanager) holding the database URL, the Redis URL, the token signing key (PEM), the htpasswd file and the web UI's session key (BERTH_UI_SESSION_KEY, at least 32 characters, the same on every instance). Any may be null."
  type = object({
    source         = optional(string, "ssm")
    region         = optional(string, "")
    database_url   = optional(string)
    redis_url      = optional(string)
    token_key      = optional(string)
    htpasswd       = optional(string)
    ui_session_key = optional(string)
  })
  default = {}
  validation {
    condition     = contains(["ssm", "secretsmanager"], var.secrets.source)
    error_message = "secrets.source: ssm or secretsmanager."
  }
}

variable "cloudwatch_log_group" {
  description = "A CloudWatch log group to send Berth's log to, with the CloudWatch agent; empty keeps it in the journal only."
  type        = string
  default     = ""
}
