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
  maintenance = {
    "purge-uploads" = {
      handler     = "app.purge_uploads"
      schedule    = var.purge_schedule
      memory_size = 512
      concurrency = -1 # unreserved
      description = "Removes Stratus uploads abandoned longer than storage.maintenance.uploadpurging.age"
    }
    "collect-garbage" = {
      handler     = "app.collect_garbage"
      schedule    = var.gc_schedule
      memory_size = 1024
      concurrency = 1 # one collector at a time (its lease in storage says so too)
      description = "Continues (or starts, once storage.maintenance.gc.interval has passed) Stratus garbage collection"
    }
  }
  # the functions whose schedule is set; their log groups exist either way
  scheduled = { for name, task in local.maintenance : name => task if task.schedule != "" }
}

resource "aws_cloudwatch_log_group" "maintenance" {
  for_each          = local.maintenance
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "maintenance" {
  for_each                       = local.scheduled
  function_name                  = "${var.name}-${each.key}"
  role                           = aws_iam_role.function.arn
  runtime                        = var.python_runtime
  handler                        = each.value.handler
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  memory_size                    = each.value.memory_size
  timeout                        = 900 # a large bucket's uploads take a while to list; gc works for the remaining time
  reserved_concurrent_executions = each.value.concurrency
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

  depends_on = [aws_iam_role_policy.function, aws_cloudwatch_log_group.maintenance]
  tags       = var.tags
}

resource "aws_cloudwatch_event_rule" "maintenance" {
  for_each            = local.scheduled
  name                = "${var.name}-${each.key}"
  description         = each.value.description
  schedule_expression = each.value.schedule
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "maintenance" {
  for_each  = local.scheduled
  rule      = aws_cloudwatch_event_rule.maintenance[each.key].name
  target_id = each.key
  arn       = aws_lambda_function.maintenance[each.key].arn
}

resource "aws_lambda_permission" "maintenance" {
  for_each      = local.scheduled
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.maintenance[each.key].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.maintenance[each.key].arn
}
