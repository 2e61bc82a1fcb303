output "cloud_config" {
  description = "The cloud-config document: the launch template's user data (base64-encode it there)."
  value       = local.cloud_config
  precondition {
    condition     = var.storage != "s3" || var.s3 != null
    error_message = "storage = \"s3\" needs s3 = { bucket = ... }."
  }
  precondition {
    condition     = var.auth == "none" || var.secrets.htpasswd != null
    error_message = "auth = \"basic\" or \"token\" needs secrets.htpasswd: the parameter holding the htpasswd file."
  }
  precondition {
    condition     = var.auth != "token" || var.external_url != ""
    error_message = "auth = \"token\" needs external_url: the URL clients send their passwords to for tokens."
  }
}

output "environment" {
  description = "The settings in /etc/berth/berth.env, by name (no secrets)."
  value       = local.environment
}

output "systemd_unit" {
  description = "The berth.service unit the VM runs."
  value       = local.unit
}

output "target_port" {
  description = "The port Berth listens on: the load balancer's target port."
  value       = tonumber(regex(":([0-9]+)$", var.listen)[0])
}

output "metrics_port" {
  description = "The port of the metrics listener, or null when there is none."
  value       = var.metrics_listen == "" ? null : tonumber(regex(":([0-9]+)$", var.metrics_listen)[0])
}
