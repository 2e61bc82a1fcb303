resource "aws_launch_template" "berth" {
  name_prefix            = "${var.name}-"
  image_id               = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id
  instance_type          = var.instance_type
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.instances.id]
  user_data              = base64encode(module.cloud_init.cloud_config)
  iam_instance_profile {
    arn = aws_iam_instance_profile.berth.arn
  }
  metadata_options {
    http_endpoint = "enabled"
    # IMDSv2 only; one hop: the instance itself, nothing it might run in a container.
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }
  monitoring {
    enabled = true
  }
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = var.name })
  }
  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = var.name })
  }
  tags = local.tags
}

resource "aws_autoscaling_group" "berth" {
  name                      = var.name
  min_size                  = var.min_size
  max_size                  = var.max_size
  vpc_zone_identifier       = var.instance_subnet_ids
  target_group_arns         = [aws_lb_target_group.berth.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 300
  launch_template {
    id      = aws_launch_template.berth.id
    version = aws_launch_template.berth.latest_version
  }
  # A new launch template (a new version of Berth, new settings) replaces the instances a
  # share at a time, never dropping below 90 % healthy.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 90
      instance_warmup        = 120
      auto_rollback          = true
    }
  }
  dynamic "tag" {
    for_each = merge(local.tags, { Name = var.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }
  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

resource "aws_autoscaling_policy" "berth" {
  name                   = "${var.name}-${var.scaling.metric}"
  autoscaling_group_name = aws_autoscaling_group.berth.name
  policy_type            = "TargetTrackingScaling"
  target_tracking_configuration {
    target_value = var.scaling.target
    predefined_metric_specification {
      predefined_metric_type = var.scaling.metric == "cpu" ? "ASGAverageCPUUtilization" : "ALBRequestCountPerTarget"
      resource_label         = var.scaling.metric == "cpu" ? null : "${aws_lb.berth.arn_suffix}/${aws_lb_target_group.berth.arn_suffix}"
    }
  }
}
