resource "aws_iam_role" "berth" {
  name = "${var.name}-instance"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_instance_profile" "berth" {
  name = "${var.name}-instance"
  role = aws_iam_role.berth.name
  tags = local.tags
}

# Exactly the S3 calls Berth makes (terraform/README.md lists them; a test compares this
# policy with the calls in service/src/storage/s3).
resource "aws_iam_role_policy" "s3" {
  name = "s3-blobs"
  role = aws_iam_role.berth.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid    = "Objects"
          Effect = "Allow"
          Action = [
            "s3:PutObject",
            "s3:GetObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
          ]
          Resource = "${aws_s3_bucket.blobs.arn}/*"
        },
        {
          Sid      = "Bucket"
          Effect   = "Allow"
          Action   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
          Resource = aws_s3_bucket.blobs.arn
        },
      ],
      var.kms_key_arn == null ? [] : [{
        Sid      = "BucketKey"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = var.kms_key_arn
      }],
    )
  })
}

# The secrets read at boot, and nothing else of SSM.
resource "aws_iam_role_policy" "parameters" {
  name = "boot-secrets"
  role = aws_iam_role.berth.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [{
        Sid      = "ReadBootSecrets"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = local.parameter_arns
      }],
      var.kms_key_arn == null ? [] : [{
        Sid      = "DecryptBootSecrets"
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = var.kms_key_arn
      }],
    )
  })
}

resource "aws_iam_role_policy" "logs" {
  count = var.cloudwatch_logs ? 1 : 0
  name  = "cloudwatch-logs"
  role  = aws_iam_role.berth.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "WriteLog"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = "${aws_cloudwatch_log_group.berth[0].arn}:*"
    }]
  })
}
