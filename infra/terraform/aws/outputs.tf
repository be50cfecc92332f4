output "registry_url" {
  description = "Base URL of the registry (GET <url>/v2/)."
  value       = aws_apigatewayv2_api.registry.api_endpoint
}

output "registry_host" {
  description = "What image references start with: <host>/team/app:tag."
  value       = trimprefix(aws_apigatewayv2_api.registry.api_endpoint, "https://")
}

output "bucket" {
  value = aws_s3_bucket.registry.bucket
}

output "function_name" {
  value = aws_lambda_function.registry.function_name
}

output "purge_function_name" {
  description = "The scheduled upload purge (empty without purge_schedule)."
  value       = try(aws_lambda_function.maintenance["purge-uploads"].function_name, "")
}

output "gc_function_name" {
  description = "The scheduled garbage collection (empty without gc_schedule)."
  value       = try(aws_lambda_function.maintenance["collect-garbage"].function_name, "")
}

output "http_secret_parameter" {
  description = "Where the functions read http.secret from."
  value       = local.secret_parameter
}

output "function_security_group_id" {
  description = "The functions' security group in the VPC (empty outside one)."
  value       = local.use_vpc ? aws_security_group.function[0].id : ""
}

output "redis_addr" {
  description = "The descriptor cache's host:port (empty: in-memory)."
  value       = local.redis_addr
}

output "function_url" {
  description = "The registry at its Lambda function URL (empty without function_url): requests may run for the function's timeout."
  value       = var.function_url ? trimsuffix(aws_lambda_function_url.registry[0].function_url, "/") : ""
}

output "eventbridge_bus_name" {
  description = "The bus the registry's events go to (empty without notifications_eventbridge)."
  value       = var.notifications_eventbridge ? aws_cloudwatch_event_bus.notifications[0].name : ""
}

output "eventbridge_bus_arn" {
  description = "Its ARN, for rules and cross-account targets (empty without notifications_eventbridge)."
  value       = var.notifications_eventbridge ? aws_cloudwatch_event_bus.notifications[0].arn : ""
}
