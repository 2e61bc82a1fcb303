resource "aws_lb" "berth" {
  name                       = var.name
  internal                   = var.internal
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.lb.id]
  subnets                    = var.load_balancer_subnet_ids
  idle_timeout               = var.idle_timeout
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  dynamic "access_logs" {
    for_each = var.load_balancer_access_logs == null ? [] : [var.load_balancer_access_logs]
    content {
      bucket  = access_logs.value.bucket
      prefix  = access_logs.value.prefix
      enabled = true
    }
  }
  tags = local.tags
}

resource "aws_lb_target_group" "berth" {
  name     = var.name
  port     = local.port
  protocol = "HTTP"
  vpc_id   = var.vpc_id
  # Longer than BERTH_SHUTDOWN_TIMEOUT: an instance leaving gets its requests finished first.
  deregistration_delay = var.shutdown_timeout + 15
  health_check {
    # 503 while a backend (PostgreSQL, Redis, S3) does not answer.
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.berth.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.berth.arn
  }
  tags = local.tags
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.berth.arn
  port              = 80
  protocol          = "HTTP"
  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
  tags = local.tags
}
