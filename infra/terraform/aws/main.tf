locals {
  use_vpc         = length(var.subnet_ids) > 0
  generate_secret = var.http_secret_parameter == ""
  secret_parameter = (local.generate_secret ? aws_ssm_parameter.http_secret[0].name
  : var.http_secret_parameter)
  # what the code accepts (chalicelib/aws_runtime.py): a Secrets Manager ARN or
  # secretsmanager:<name>; else an SSM parameter name (ssm: prefix optional) or ARN
  secret_in_secrets_manager = can(regex("^(arn:[^:]+:secretsmanager:|secretsmanager:)", var.http_secret_parameter))
  secret_service            = local.secret_in_secrets_manager ? "secretsmanager" : "ssm"
  secret_name               = trimprefix(trimprefix(trimprefix(local.secret_parameter, "secretsmanager:"), "ssm:"), "/")
  arn_prefix                = "arn:${data.aws_partition.current.partition}"
  account                   = data.aws_caller_identity.current.account_id
  # a secret's ARN ends in -<6 random characters>, which a name does not know
  secret_resource = (
    startswith(local.secret_parameter, "arn:") ? (
      local.secret_in_secrets_manager && !can(regex("-[A-Za-z0-9]{6}$", local.secret_parameter))
      ? "${local.secret_parameter}-??????" : local.secret_parameter
    ) :
    local.secret_in_secrets_manager ? "${local.arn_prefix}:secretsmanager:${var.region}:${local.account}:secret:${local.secret_name}-??????" :
    "${local.arn_prefix}:ssm:${var.region}:${local.account}:parameter/${local.secret_name}"
  )

  redis_addr = (var.create_redis
    ? "${aws_elasticache_replication_group.redis[0].primary_endpoint_address}:${aws_elasticache_replication_group.redis[0].port}"
  : var.redis_addr)
  # The Redis AUTH token is never in the functions' environment: they get where it is
  # (STRATUS_REDIS_PASSWORD_PARAMETER) and read it with their role when the cache is
  # first used. The created group's token is its SSM SecureString; an existing Redis's
  # is redis_password_parameter (SSM, or Secrets Manager as the http secret can be).
  redis_token_parameter = (var.create_redis ? aws_ssm_parameter.redis_auth_token[0].name
  : var.redis_password_parameter)
  redis_token_in_secrets_manager = can(regex("^(arn:[^:]+:secretsmanager:|secretsmanager:)", local.redis_token_parameter))
  redis_token_service            = local.redis_token_in_secrets_manager ? "secretsmanager" : "ssm"
  redis_token_name               = trimprefix(trimprefix(trimprefix(local.redis_token_parameter, "secretsmanager:"), "ssm:"), "/")
  redis_token_resource = (
    startswith(local.redis_token_parameter, "arn:") ? (
      local.redis_token_in_secrets_manager && !can(regex("-[A-Za-z0-9]{6}$", local.redis_token_parameter))
      ? "${local.redis_token_parameter}-??????" : local.redis_token_parameter
    ) :
    local.redis_token_in_secrets_manager ? "${local.arn_prefix}:secretsmanager:${var.region}:${local.account}:secret:${local.redis_token_name}-??????" :
    "${local.arn_prefix}:ssm:${var.region}:${local.account}:parameter/${local.redis_token_name}"
  )

  environment = merge({
    REGISTRY_STORAGE                      = "s3"
    REGISTRY_STORAGE_S3_BUCKET            = aws_s3_bucket.registry.bucket
    REGISTRY_STORAGE_S3_REGION            = var.region
    REGISTRY_STORAGE_S3_ROOTDIRECTORY     = var.root_directory
    REGISTRY_STORAGE_S3_ENCRYPT           = "true"
    REGISTRY_STORAGE_S3_KEYID             = var.kms_key_arn
    REGISTRY_STORAGE_REDIRECT_EXPIRY      = var.redirect_expiry
    REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR = local.redis_addr == "" ? "inmemory" : "redis"
    STRATUS_HTTP_SECRET_PARAMETER         = local.secret_parameter
    # a direct upload's completion PUT answers 202 after this and the client repeats it
    REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME = var.direct_upload_verify_time
    }, local.redis_addr == "" ? {} : {
    REGISTRY_REDIS_ADDR              = local.redis_addr
    REGISTRY_REDIS_TLS               = "true"
    STRATUS_REDIS_PASSWORD_PARAMETER = local.redis_token_parameter
    # only with an existing Redis whose token was given in plain text (redis_password)
    REGISTRY_REDIS_PASSWORD = var.create_redis ? "" : var.redis_password
    }, var.notifications_eventbridge ? {
    # notifications.eventbridge: the bus notifications.tf creates
    REGISTRY_NOTIFICATIONS_EVENTBRIDGE_BUS    = aws_cloudwatch_event_bus.notifications[0].name
    REGISTRY_NOTIFICATIONS_EVENTBRIDGE_REGION = var.region
  } : {}, local.proxy_environment, var.extra_environment)
  # empty values are dropped: an unset key keeps its default
  function_environment = { for k, v in local.environment : k => v if v != "" }
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

# Generated by Secrets Manager at apply time and written to SSM write-only: the value is
# in neither the plan nor the state. Bump value_wo_version to rotate it (uploads in
# flight then fail their next request and start again).
ephemeral "aws_secretsmanager_random_password" "http_secret" {
  count               = local.generate_secret ? 1 : 0
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_ssm_parameter" "http_secret" {
  count            = local.generate_secret ? 1 : 0
  name             = "/${var.name}/http-secret"
  description      = "Signs Stratus upload state (http.secret); shared by every function instance."
  type             = "SecureString"
  value_wo         = ephemeral.aws_secretsmanager_random_password.http_secret[0].random_password
  value_wo_version = 1
  tags             = var.tags
}

# -- the functions' role -----------------------------------------------------------------------

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
    sid     = "Logs"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for group in concat([aws_cloudwatch_log_group.function], values(aws_cloudwatch_log_group.maintenance)) :
    "${group.arn}:*"]
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
    sid       = "HttpSecret"
    actions   = local.secret_in_secrets_manager ? ["secretsmanager:GetSecretValue"] : ["ssm:GetParameter"]
    resources = [local.secret_resource]
  }
  dynamic "statement" {
    for_each = local.redis_token_parameter == "" ? [] : [1]
    content {
      sid       = "RedisAuthToken"
      actions   = local.redis_token_in_secrets_manager ? ["secretsmanager:GetSecretValue"] : ["ssm:GetParameter"]
      resources = [local.redis_token_resource]
    }
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
    # in a VPC, Lambda attaches the functions' network interfaces with their role
    # (what the managed AWSLambdaVPCAccessExecutionRole grants, logs aside)
    for_each = local.use_vpc ? [1] : []
    content {
      sid = "VpcNetworkInterfaces"
      actions = [
        "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
      ]
      resources = ["*"]
    }
  }
  dynamic "statement" {
    for_each = var.notifications_eventbridge ? [1] : []
    content {
      sid       = "Notifications"
      actions   = ["events:PutEvents"]
      resources = [aws_cloudwatch_event_bus.notifications[0].arn]
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


# -- the registry function ---------------------------------------------------------------------

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
    variables = local.function_environment
  }

  tracing_config {
    mode = var.tracing ? "Active" : "PassThrough"
  }

  dynamic "vpc_config" {
    for_each = local.use_vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = concat([aws_security_group.function[0].id], var.security_group_ids)
    }
  }

  depends_on = [aws_iam_role_policy.function, aws_cloudwatch_log_group.function]
  tags       = var.tags
}

# -- optionally a function URL: requests may run for the function's whole timeout --------------

resource "aws_lambda_function_url" "registry" {
  count              = var.function_url ? 1 : 0
  function_name      = aws_lambda_function.registry.function_name
  authorization_type = "NONE" # the registry checks credentials itself (auth.htpasswd / auth.token)
  invoke_mode        = "BUFFERED"
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
