# create_redis: the descriptor cache on ElastiCache Redis in the functions' subnets,
# TLS in transit (REGISTRY_REDIS_TLS), an AUTH token, encrypted at rest, reachable
# on its port from the functions' security group only.

locals {
  redis_port = 6379
}

# A token from Secrets Manager's generator (no `random` provider needed), kept in an
# SSM SecureString: ElastiCache never returns a group's token, so the parameter is
# where the functions (STRATUS_REDIS_PASSWORD_PARAMETER names it; their role may read
# it, main.tf "RedisAuthToken") and operators read it. Later plans draw a new token,
# which the parameter and the group both ignore.
data "aws_secretsmanager_random_password" "redis" {
  count               = var.create_redis ? 1 : 0
  password_length     = 64
  exclude_punctuation = true
}

resource "aws_ssm_parameter" "redis_auth_token" {
  count       = var.create_redis ? 1 : 0
  name        = "/${var.name}/redis-auth-token"
  description = "AUTH token of the Stratus descriptor cache (ElastiCache)."
  type        = "SecureString"
  value       = data.aws_secretsmanager_random_password.redis[0].random_password
  tags        = var.tags

  lifecycle {
    ignore_changes = [value]
  }
}

resource "aws_security_group" "redis" {
  count       = var.create_redis ? 1 : 0
  name        = "${var.name}-redis"
  description = "Stratus descriptor cache: Redis from the Stratus functions only"
  vpc_id      = local.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_function" {
  count                        = var.create_redis ? 1 : 0
  security_group_id            = aws_security_group.redis[0].id
  description                  = "Redis (TLS) from the Stratus functions"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.function[0].id
}

resource "aws_vpc_security_group_egress_rule" "function_redis" {
  count                        = var.create_redis ? 1 : 0
  security_group_id            = aws_security_group.function[0].id
  description                  = "The descriptor cache"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.redis[0].id
}

resource "aws_elasticache_subnet_group" "redis" {
  count      = var.create_redis ? 1 : 0
  name       = "${var.name}-redis"
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_elasticache_replication_group" "redis" {
  count                      = var.create_redis ? 1 : 0
  replication_group_id       = "${var.name}-cache"
  description                = "Stratus blob descriptor cache"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  port                       = local.redis_port
  num_cache_clusters         = 1 + var.redis_replicas
  automatic_failover_enabled = var.redis_replicas > 0
  multi_az_enabled           = var.redis_replicas > 0
  subnet_group_name          = aws_elasticache_subnet_group.redis[0].name
  security_group_ids         = [aws_security_group.redis[0].id]
  transit_encryption_enabled = true
  at_rest_encryption_enabled = true
  auth_token                 = aws_ssm_parameter.redis_auth_token[0].value
  apply_immediately          = true
  tags                       = var.tags

  lifecycle {
    ignore_changes = [auth_token]
  }
}

# In a VPC without a NAT the functions read the token through its service's interface
# endpoint. network.tf makes the http secret's; one more when the token lives in the
# other service (the created token is in SSM, the http secret may be in Secrets Manager).
resource "aws_vpc_endpoint" "redis_token" {
  count               = local.endpoints && local.redis_token_parameter != "" && local.redis_token_service != local.secret_service ? 1 : 0
  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${var.region}.${local.redis_token_service}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true
  tags                = merge(var.tags, { Name = "${var.name}-${local.redis_token_service}" })
}
