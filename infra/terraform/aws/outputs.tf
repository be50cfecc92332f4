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

output "http_secret_parameter" {
  description = "Where the function reads http.secret from."
  value       = local.secret_parameter
}
