# In a VPC (subnet_ids set): the functions' security group, the endpoints that let them
# reach S3 and the secret's service without a NAT, and the rules between them and Redis.

locals {
  endpoints = local.use_vpc && var.vpc_endpoints
}

data "aws_subnet" "function" {
  count = local.use_vpc ? 1 : 0
  id    = var.subnet_ids[0]
}

locals {
  vpc_id = local.use_vpc ? data.aws_subnet.function[0].vpc_id : null
}

data "aws_route_tables" "vpc" {
  count  = local.endpoints ? 1 : 0
  vpc_id = local.vpc_id
}

resource "aws_security_group" "function" {
  count       = local.use_vpc ? 1 : 0
  name        = "${var.name}-function"
  description = "Stratus functions: out to S3, the secret's endpoint and Redis only"
  vpc_id      = local.vpc_id
  tags        = var.tags
}

# S3 through the gateway endpoint: HTTPS to the S3 prefix list
resource "aws_vpc_endpoint" "s3" {
  count             = local.endpoints ? 1 : 0
  vpc_id            = local.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = data.aws_route_tables.vpc[0].ids
  tags              = merge(var.tags, { Name = "${var.name}-s3" })
}

resource "aws_vpc_security_group_egress_rule" "function_s3" {
  count             = local.endpoints ? 1 : 0
  security_group_id = aws_security_group.function[0].id
  description       = "S3 through the gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.s3[0].prefix_list_id
}

# The secret (SSM or Secrets Manager) through an interface endpoint with private DNS
resource "aws_security_group" "endpoints" {
  count       = local.endpoints ? 1 : 0
  name        = "${var.name}-endpoints"
  description = "Interface endpoints the Stratus functions use"
  vpc_id      = local.vpc_id
  tags        = var.tags
}

resource "aws_vpc_endpoint" "secret" {
  count               = local.endpoints ? 1 : 0
  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${var.region}.${local.secret_service}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true
  tags                = merge(var.tags, { Name = "${var.name}-${local.secret_service}" })
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_function" {
  count                        = local.endpoints ? 1 : 0
  security_group_id            = aws_security_group.endpoints[0].id
  description                  = "HTTPS from the Stratus functions"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.function[0].id
}

resource "aws_vpc_security_group_egress_rule" "function_endpoints" {
  count                        = local.endpoints ? 1 : 0
  security_group_id            = aws_security_group.function[0].id
  description                  = "The secret's interface endpoint"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.endpoints[0].id
}
