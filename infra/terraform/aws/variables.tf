variable "name" {
  description = "Base name of the function, role, API and parameter."
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
  description = "Lambda zip made by `chalice package --stage dev out/` (out/deployment.zip: app.py, chalicelib/, dependencies)."
  type        = string
  default     = "../../../out/deployment.zip"
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
  description = "Existing SSM parameter (SecureString) or Secrets Manager ARN holding http.secret; empty: one is generated."
  type        = string
  default     = ""
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

variable "redis_addr" {
  description = "host:port of an ElastiCache (Redis) descriptor cache; empty: the in-memory cache. Needs subnet_ids."
  type        = string
  default     = ""
}

variable "subnet_ids" {
  description = "Private subnets for the function (with a route to S3 and SSM), when it must reach Redis in a VPC."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "Security groups of the function in the VPC."
  type        = list(string)
  default     = []
}

variable "extra_environment" {
  description = "More REGISTRY_* variables for the function."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the function's logs."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
