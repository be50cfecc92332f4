locals {
  use_vpc            = length(var.subnet_ids) > 0
  generate_secret    = var.http_secret_parameter == ""
  secret_parameter   = local.generate_secret ? aws_ssm_parameter.http_secret[0].name : var.http_secret_parameter
  secret_is_sm       = startswith(var.http_secret_parameter, "arn:aws:secretsmanager:")
  ssm_parameter_name = trimprefix(local.secret_parameter, "/")
  environment = merge({
    REGISTRY_STORAGE                      = "s3"
    REGISTRY_STORAGE_S3_BUCKET            = aws_s3_bucket.registry.bucket
    REGISTRY_STORAGE_S3_REGION            = var.region
    REGISTRY_STORAGE_S3_ROOTDIRECTORY     = var.root_directory
    REGISTRY_STORAGE_S3_ENCRYPT           = "true"
    REGISTRY_STORAGE_S3_KEYID             = var.kms_key_arn
    REGISTRY_STORAGE_REDIRECT_EXPIRY      = var.redirect_expiry
    REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR = var.redis_addr == "" ? "inmemory" : "redis"
    STRATUS_HTTP_SECRET_PARAMETER         = local.secret_parameter
    }, var.redis_addr == "" ? {} : {
    REGISTRY_REDIS_ADDR = var.redis_addr
    REGISTRY_REDIS_TLS  = "true"
  }, var.extra_environment)
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# -- the bucket ------------------------------------------------------------------------------

resource "aws_s3_bucket" "registry" {
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "registry" {
  bucket = aws_s3_bucket.registry.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "registry" {
  bucket                  = aws_s3_bucket.registry.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "registry" {
  bucket = aws_s3_bucket.registry.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == "" ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn == "" ? null : var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != ""
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "registry" {
  bucket = aws_s3_bucket.registry.id
  rule {
    id     = "abort-abandoned-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_uploads_days
    }
  }
}

# -- the upload-state secret -------------------------------------------------------------------

resource "random_password" "http_secret" {
  count   = local.generate_secret ? 1 : 0
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "http_secret" {
  count       = local.generate_secret ? 1 : 0
  name        = "/${var.name}/http-secret"
  description = "Signs Stratus upload state (http.secret); shared by every function instance."
  type        = "SecureString"
  value       = random_password.http_secret[0].result
  tags        = var.tags
}

# -- the function ------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name               = "${var.name}-function"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "function" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }
  statement {
    sid = "RegistryObjects"
    actions = [
      "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
      "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.registry.arn}/*"]
  }
  statement {
    sid       = "RegistryBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.registry.arn]
  }
  statement {
    sid     = "HttpSecret"
    actions = local.secret_is_sm ? ["secretsmanager:GetSecretValue"] : ["ssm:GetParameter"]
    resources = [local.secret_is_sm ? var.http_secret_parameter :
    "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:parameter/${local.ssm_parameter_name}"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == "" ? [] : [var.kms_key_arn]
    content {
      sid       = "BucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
  dynamic "statement" {
    for_each = var.tracing ? [1] : []
    content {
      sid       = "Tracing"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role_policy" "function" {
  name   = "${var.name}-registry"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

resource "aws_iam_role_policy_attachment" "vpc" {
  count      = local.use_vpc ? 1 : 0
  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_cloudwatch_log_group" "function" {
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "registry" {
  function_name    = var.name
  role             = aws_iam_role.function.arn
  runtime          = var.python_runtime
  handler          = "app.app"
  filename         = var.package_path
  source_code_hash = filebase64sha256(var.package_path)
  memory_size      = var.memory_size
  timeout          = var.timeout
  architectures    = ["x86_64"]

  environment {
    # Empty values are dropped: an unset key keeps its default.
    variables = { for k, v in local.environment : k => v if v != "" }
  }

  tracing_config {
    mode = var.tracing ? "Active" : "PassThrough"
  }

  dynamic "vpc_config" {
    for_each = local.use_vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  depends_on = [aws_iam_role_policy.function, aws_cloudwatch_log_group.function]
  tags       = var.tags
}

# -- the HTTP API: its $default stage serves /v2/ at the root of its host -------------------------

resource "aws_apigatewayv2_api" "registry" {
  name          = var.name
  protocol_type = "HTTP"
  tags          = var.tags
}

resource "aws_apigatewayv2_integration" "registry" {
  api_id                 = aws_apigatewayv2_api.registry.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.registry.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 30000
}

resource "aws_apigatewayv2_route" "registry" {
  for_each  = toset(["ANY /v2", "ANY /v2/{proxy+}"])
  api_id    = aws_apigatewayv2_api.registry.id
  route_key = each.value
  target    = "integrations/${aws_apigatewayv2_integration.registry.id}"
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.registry.id
  name        = "$default"
  auto_deploy = true
  tags        = var.tags
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowHttpApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.registry.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.registry.execution_arn}/*/*"
}
