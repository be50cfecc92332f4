variable "name" {
  description = "Base name of the functions, role, API, parameter, security groups and Redis group."
  type        = string
  default     = "stratus"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "bucket_name" {
  description = "Globally unique S3 bucket holding the registry (created here)."
  type        = string
}

variable "root_directory" {
  description = "Optional key prefix inside the bucket (storage.s3.rootdirectory)."
  type        = string
  default     = ""
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS of the bucket and of the objects Stratus writes; empty: SSE-S3."
  type        = string
  default     = ""
}

variable "package_path" {
  description = "Lambda zip made by `make package` (build/lambda/deployment.zip: app.py, chalicelib/, dependencies)."
  type        = string
  default     = "../../../build/lambda/deployment.zip"
}

variable "python_runtime" {
  description = "Lambda runtime."
  type        = string
  default     = "python3.11"
}

variable "memory_size" {
  description = "Lambda memory in MB (CPU scales with it; 1769 MB is one full vCPU)."
  type        = number
  default     = 1024
}

variable "timeout" {
  description = "Lambda timeout in seconds; the HTTP API answers within 30 s anyway."
  type        = number
  default     = 30
}

variable "http_secret_parameter" {
  description = <<-EOT
    Where http.secret is kept, when it already exists: an SSM parameter (SecureString) by name
    (`/stratus/http-secret`, or `ssm:/stratus/http-secret`) or ARN, or a Secrets Manager secret
    by ARN or as `secretsmanager:<name>`. Empty: an SSM SecureString `/<name>/http-secret` is
    created with a generated value that never enters the Terraform state.
  EOT
  type        = string
  default     = ""
  validation {
    condition = var.http_secret_parameter == "" || can(regex(
      "^(/[A-Za-z0-9_.\\-/]+|ssm:/?[A-Za-z0-9_.\\-/]+|[A-Za-z0-9_.\\-][A-Za-z0-9_.\\-/]*|arn:[a-z-]+:ssm:[a-z0-9-]+:[0-9]{12}:parameter/.+|arn:[a-z-]+:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+|secretsmanager:[A-Za-z0-9/_+=.@\\-]+)$",
    var.http_secret_parameter))
    error_message = "http_secret_parameter: an SSM parameter name or ARN, a Secrets Manager ARN, or secretsmanager:<name>."
  }
}

variable "redirect_expiry" {
  description = "Lifetime of presigned blob URLs (storage.redirect.expiry)."
  type        = string
  default     = "20m"
}

variable "abort_incomplete_uploads_days" {
  description = "Days after which S3 aborts multipart uploads nobody finished or cancelled."
  type        = number
  default     = 7
}

variable "tracing" {
  description = "Active X-Ray tracing: a subsegment per storage and cache call."
  type        = bool
  default     = true
}

# -- in a VPC ----------------------------------------------------------------------------------

variable "subnet_ids" {
  description = <<-EOT
    Private subnets (of one VPC) for the functions. With them the module creates the functions'
    security group, an S3 gateway endpoint on the VPC's route tables and an interface endpoint
    for the secret's service (SSM or Secrets Manager), so no NAT is needed; `create_redis` puts
    ElastiCache there too. Empty: the functions run outside any VPC.
  EOT
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "More security groups for the functions in the VPC (the module's own is always attached)."
  type        = list(string)
  default     = []
}

variable "vpc_endpoints" {
  description = "In a VPC, create the S3 gateway and SSM/Secrets Manager interface endpoints (false when the subnets route through a NAT or the VPC has them)."
  type        = bool
  default     = true
}

variable "create_redis" {
  description = "Create an ElastiCache Redis replication group (TLS in transit, AUTH token, encrypted at rest) in subnet_ids as the descriptor cache."
  type        = bool
  default     = false
  validation {
    condition     = !var.create_redis || length(var.subnet_ids) > 0
    error_message = "create_redis needs subnet_ids: ElastiCache lives in a VPC, and the functions must be in it to reach it."
  }
}

variable "redis_node_type" {
  description = "Node type of the created Redis group."
  type        = string
  default     = "cache.t4g.micro"
}

variable "redis_replicas" {
  description = "Read replicas of the created Redis group (at least 1 for automatic failover across AZs)."
  type        = number
  default     = 1
}

variable "redis_addr" {
  description = "host:port of an existing Redis (TLS) as the descriptor cache, instead of create_redis; reached from subnet_ids, allowed by security_group_ids. Empty: in-memory cache, or the created group."
  type        = string
  default     = ""
  validation {
    condition     = var.redis_addr == "" || length(var.subnet_ids) > 0
    error_message = "redis_addr needs subnet_ids: an ElastiCache endpoint is reachable only from inside its VPC."
  }
  validation {
    condition     = var.redis_addr == "" || !var.create_redis
    error_message = "redis_addr and create_redis exclude each other: name an existing Redis, or have one created."
  }
  validation {
    condition     = var.redis_addr == "" || can(regex("^[^:/]+:[0-9]+$", var.redis_addr))
    error_message = "redis_addr is host:port."
  }
}

variable "redis_password_parameter" {
  description = <<-EOT
    Where the AUTH token of the existing Redis at redis_addr is kept, if it has one: an SSM
    parameter (SecureString) by name or ARN, or a Secrets Manager secret by ARN or as
    `secretsmanager:<name>`. The functions read it with their role when the cache is first
    used (STRATUS_REDIS_PASSWORD_PARAMETER); it is never in their environment. With
    create_redis the generated token's parameter is used.
  EOT
  type        = string
  default     = ""
  validation {
    condition = var.redis_password_parameter == "" || can(regex(
      "^(/[A-Za-z0-9_.\\-/]+|ssm:/?[A-Za-z0-9_.\\-/]+|[A-Za-z0-9_.\\-][A-Za-z0-9_.\\-/]*|arn:[a-z-]+:ssm:[a-z0-9-]+:[0-9]{12}:parameter/.+|arn:[a-z-]+:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+|secretsmanager:[A-Za-z0-9/_+=.@\\-]+)$",
    var.redis_password_parameter))
    error_message = "redis_password_parameter: an SSM parameter name or ARN, a Secrets Manager ARN, or secretsmanager:<name>."
  }
  validation {
    condition     = var.redis_password_parameter == "" || (var.redis_addr != "" && !var.create_redis)
    error_message = "redis_password_parameter is the token of an existing Redis (redis_addr); create_redis makes its own."
  }
}

variable "redis_password" {
  description = "AUTH password of the existing Redis at redis_addr, in plain text in the functions' environment: prefer redis_password_parameter."
  type        = string
  default     = ""
  sensitive   = true
  validation {
    condition     = var.redis_password == "" || var.redis_password_parameter == ""
    error_message = "redis_password and redis_password_parameter exclude each other: give the token one way."
  }
}

# -- maintenance -------------------------------------------------------------------------------

variable "purge_schedule" {
  description = "EventBridge schedule of the upload purge (app.purge_uploads, as `chalice deploy` schedules it); empty: none."
  type        = string
  default     = "cron(17 3 * * ? *)"
}

variable "gc_schedule" {
  description = "EventBridge schedule of garbage collection steps (app.collect_garbage, as `chalice deploy` schedules it); empty: none."
  type        = string
  default     = "rate(15 minutes)"
}

variable "extra_environment" {
  description = "More REGISTRY_* variables for the functions."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the functions' logs."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}

variable "function_url" {
  description = <<-EOT
    Also serve the registry at a Lambda function URL, whose requests may run for the function's
    whole `timeout` (up to 900 s) instead of API Gateway's 30 s: for direct-upload verifications
    and moves of very large layers. Raise `timeout` and `direct_upload_verify_time` with it, and
    point clients (or `stratus relay --upstream`) at the `function_url` output. The registry
    does its own authentication, so the URL's auth type is NONE.
  EOT
  type        = bool
  default     = false
}

variable "direct_upload_verify_time" {
  description = <<-EOT
    How long one completion PUT of a direct upload verifies before answering 202 (the client
    repeats it): within API Gateway's 30 s by default. Only with `function_url`, and clients sent
    there, may it approach the function's `timeout` (e.g. "10m" with timeout = 900).
  EOT
  type        = string
  default     = "20s"
}

# -- notifications ------------------------------------------------------------------------------

variable "notifications_eventbridge" {
  description = <<-EOT
    Send the registry's events (push, pull, delete, mount: docs/notifications.md) to an
    EventBridge bus the module creates: the registry function may then call events:PutEvents on
    that bus alone, and its environment names the bus (REGISTRY_NOTIFICATIONS_EVENTBRIDGE_BUS,
    _REGION). In a VPC with `vpc_endpoints`, an interface endpoint for EventBridge is created too.
  EOT
  type        = bool
  default     = false
}

variable "eventbridge_bus_name" {
  description = "Name of the bus `notifications_eventbridge` creates; empty: <name>-registry-events."
  type        = string
  default     = ""
}
