locals {
  service_host = var.external_url == "" ? "" : regex("^https?://([^/]+)$", var.external_url)[0]
  s3 = var.storage != "s3" || var.s3 == null ? {} : {
    for k, v in {
      BERTH_S3_BUCKET           = var.s3.bucket
      BERTH_S3_REGION           = var.s3.region
      BERTH_S3_ENDPOINT         = var.s3.endpoint
      BERTH_S3_FORCE_PATH_STYLE = tostring(var.s3.force_path_style)
      BERTH_S3_PREFIX           = var.s3.prefix
      BERTH_S3_REDIRECT         = tostring(var.s3.redirect)
    } : k => v if v != ""
  }
  # The settings that are no secret: /etc/berth/berth.env.
  environment = merge(
    {
      BERTH_LISTEN           = var.listen
      BERTH_DATA_DIR         = "/var/lib/berth"
      BERTH_AUTH             = var.auth
      BERTH_TRUST_FORWARDED  = var.trust_forwarded
      BERTH_TRUSTED_PROXIES  = tostring(var.trusted_proxies)
      BERTH_STORAGE          = var.storage
      BERTH_SHUTDOWN_TIMEOUT = tostring(var.shutdown_timeout)
      BERTH_LOG_FORMAT       = var.log_format
      BERTH_UI               = tostring(var.ui)
    },
    var.metrics_listen == "" ? {} : { BERTH_METRICS_LISTEN = var.metrics_listen },
    var.external_url == "" ? {} : { BERTH_EXTERNAL_URL = var.external_url, BERTH_SERVICE = local.service_host },
    local.s3,
    var.secrets.htpasswd == null ? {} : { BERTH_HTPASSWD = "/run/berth/htpasswd" },
    var.secrets.token_key == null ? {} : { BERTH_TOKEN_KEY = "/run/berth/token-key.pem" },
    var.extra_environment,
  )
  environment_file = join("", [for k in sort(keys(local.environment)) : "${k}=${local.environment[k]}\n"])

  uses_secrets = anytrue([for k in ["database_url", "redis_url", "token_key", "htpasswd", "ui_session_key"] : var.secrets[k] != null])
  packages = concat(
    ["ca-certificates", "curl"],
    local.uses_secrets ? ["awscli"] : [],
    var.install.image != null ? ["podman"] : [],
  )
  fetch_secrets = templatefile("${path.module}/templates/fetch-secrets.sh.tftpl", {
    source       = var.secrets.source
    region_arg   = var.secrets.region == "" ? "" : "--region ${var.secrets.region} "
    database_url = var.secrets.database_url
    redis_url    = var.secrets.redis_url
    token_key    = var.secrets.token_key
    htpasswd     = var.secrets.htpasswd
    ui_session   = var.secrets.ui_session_key
  })
  install = templatefile("${path.module}/templates/install.sh.tftpl", {
    url    = var.install.url
    sha256 = var.install.sha256
    image  = var.install.image
  })
  unit = templatefile("${path.module}/templates/berth.service.tftpl", {
    shutdown_timeout = var.shutdown_timeout
    stop_timeout     = var.shutdown_timeout + 15
    log_file         = var.cloudwatch_log_group != ""
  })
  cloudwatch_agent = jsonencode({
    logs = {
      logs_collected = {
        files = {
          collect_list = [{
            file_path       = "/var/log/berth/berth.log"
            log_group_name  = var.cloudwatch_log_group
            log_stream_name = "{instance_id}"
          }]
        }
      }
    }
  })
  cloud_config = templatefile("${path.module}/templates/cloud-config.yaml.tftpl", {
    packages         = local.packages
    environment_file = local.environment_file
    fetch_secrets    = local.fetch_secrets
    install          = local.install
    unit             = local.unit
    cloudwatch       = var.cloudwatch_log_group != ""
    cloudwatch_agent = local.cloudwatch_agent
  })
}
