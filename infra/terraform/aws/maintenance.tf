# Scheduled maintenance, as `chalice deploy` makes it from app.py's @app.schedule
# functions: each a function of its own with the registry's zip, role, network and
# environment, run by an EventBridge rule.
#
# - app.purge_uploads removes uploads older than storage.maintenance.uploadpurging.age
#   (168h; REGISTRY_* in extra_environment change it): S3's lifecycle rule aborts their
#   multipart parts, this removes the rest.
# - app.collect_garbage continues the garbage collection checkpointed in storage (or
#   starts one once storage.maintenance.gc.interval has passed), working for the
#   invocation's remaining time; one at a time (reserved concurrency 1).

locals {
  schedule    = var.purge_schedule != ""
  gc_schedule = var.gc_schedule != ""
}

resource "aws_cloudwatch_log_group" "maintenance" {
  name              = "/aws/lambda/${var.name}-purge-uploads"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "purge_uploads" {
  count            = local.schedule ? 1 : 0
  function_name    = "${var.name}-purge-uploads"
  role             = aws_iam_role.function.arn
  runtime          = var.python_runtime
  handler          = "app.purge_uploads"
  filename         = var.package_path
  source_code_hash = filebase64sha256(var.package_path)
  memory_size      = 512
  timeout          = 900 # listing every repository's uploads of a large bucket takes a while
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

  depends_on = [aws_iam_role_policy.function, aws_cloudwatch_log_group.maintenance]
  tags       = var.tags
}

resource "aws_cloudwatch_event_rule" "purge_uploads" {
  count               = local.schedule ? 1 : 0
  name                = "${var.name}-purge-uploads"
  description         = "Removes Stratus uploads abandoned longer than storage.maintenance.uploadpurging.age"
  schedule_expression = var.purge_schedule
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "purge_uploads" {
  count     = local.schedule ? 1 : 0
  rule      = aws_cloudwatch_event_rule.purge_uploads[0].name
  target_id = "purge-uploads"
  arn       = aws_lambda_function.purge_uploads[0].arn
}

resource "aws_lambda_permission" "purge_uploads" {
  count         = local.schedule ? 1 : 0
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.purge_uploads[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.purge_uploads[0].arn
}

# -- garbage collection ------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "gc" {
  name              = "/aws/lambda/${var.name}-collect-garbage"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "collect_garbage" {
  count                          = local.gc_schedule ? 1 : 0
  function_name                  = "${var.name}-collect-garbage"
  role                           = aws_iam_role.function.arn
  runtime                        = var.python_runtime
  handler                        = "app.collect_garbage"
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  memory_size                    = 1024
  timeout                        = 900 # the budget of each step is the remaining time less a margin
  reserved_concurrent_executions = 1   # one collector at a time (its lease in storage says so too)
  architectures                  = ["x86_64"]

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

  depends_on = [aws_iam_role_policy.function, aws_cloudwatch_log_group.gc]
  tags       = var.tags
}

resource "aws_cloudwatch_event_rule" "collect_garbage" {
  count               = local.gc_schedule ? 1 : 0
  name                = "${var.name}-collect-garbage"
  description         = "Continues (or starts, once storage.maintenance.gc.interval has passed) Stratus garbage collection"
  schedule_expression = var.gc_schedule
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "collect_garbage" {
  count     = local.gc_schedule ? 1 : 0
  rule      = aws_cloudwatch_event_rule.collect_garbage[0].name
  target_id = "collect-garbage"
  arn       = aws_lambda_function.collect_garbage[0].arn
}

resource "aws_lambda_permission" "collect_garbage" {
  count         = local.gc_schedule ? 1 : 0
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.collect_garbage[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.collect_garbage[0].arn
}
