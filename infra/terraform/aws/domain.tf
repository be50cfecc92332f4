# -- optional custom domain: the registry at https://<domain_name>/v2/ ---------------------------
#
# The HTTP API's $default stage already serves /v2/ at the root of its execute-api host;
# a custom domain gives clients a name of yours (image references start with it). The API
# is mapped with no mapping key, at the domain's root, where registry clients look for
# /v2/. DNS is yours: point domain_name at custom_domain_target (a CNAME, or a Route 53
# alias with custom_domain_zone_id).

variable "domain_name" {
  description = "Custom domain for the registry (e.g. registry.example.com); empty: the execute-api host only."
  type        = string
  default     = ""
}

variable "certificate_arn" {
  description = "ACM certificate for domain_name, in the API's region (a REGIONAL endpoint)."
  type        = string
  default     = ""

  validation {
    condition     = var.domain_name == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/", var.certificate_arn))
    error_message = "domain_name needs certificate_arn: the ARN of an ACM certificate in the API's region."
  }
}

resource "aws_apigatewayv2_domain_name" "registry" {
  count       = var.domain_name == "" ? 0 : 1
  domain_name = var.domain_name
  tags        = var.tags

  domain_name_configuration {
    certificate_arn = var.certificate_arn
    endpoint_type   = "REGIONAL"
    security_policy = "TLS_1_2"
  }
}

resource "aws_apigatewayv2_api_mapping" "registry" {
  count       = length(aws_apigatewayv2_domain_name.registry)
  api_id      = aws_apigatewayv2_api.registry.id
  domain_name = aws_apigatewayv2_domain_name.registry[0].id
  stage       = aws_apigatewayv2_stage.default.id
}

output "custom_domain_target" {
  description = "Where domain_name's DNS record points (empty without domain_name)."
  value       = length(aws_apigatewayv2_domain_name.registry) > 0 ? aws_apigatewayv2_domain_name.registry[0].domain_name_configuration[0].target_domain_name : ""
}

output "custom_domain_zone_id" {
  description = "The hosted zone of custom_domain_target, for a Route 53 alias record (empty without domain_name)."
  value       = length(aws_apigatewayv2_domain_name.registry) > 0 ? aws_apigatewayv2_domain_name.registry[0].domain_name_configuration[0].hosted_zone_id : ""
}
