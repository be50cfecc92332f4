variable "name" {
  description = "Base name: the resource group, Function App and plan are named after it."
  type        = string
  default     = "stratus"
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "storage_account_name" {
  description = "Globally unique storage account (3-24 lower-case letters and digits) holding the registry."
  type        = string
}

variable "container_name" {
  description = "Blob container for the registry:2 layout."
  type        = string
  default     = "registry"
}

variable "root_directory" {
  description = "Optional key prefix inside the container (storage.azure.rootdirectory)."
  type        = string
  default     = ""
}

variable "package_path" {
  description = "Zip made by `STRATUS_ZIP=1 sh azure_func/package.sh` (function_app.py, host.json, requirements.txt, chalicelib/)."
  type        = string
  default     = "../../../azure_func/dist.zip"
}

variable "python_version" {
  description = "Python version of the Functions worker."
  type        = string
  default     = "3.11"
}

variable "http_secret" {
  description = "http.secret signing upload state, kept in Key Vault (the app settings hold a reference); generated when empty. Must stay the same across deployments."
  type        = string
  default     = ""
  sensitive   = true
}

variable "key_vault_name" {
  description = "Globally unique Key Vault (3-24 letters, digits, dashes) holding http.secret; empty: <storage_account_name>-kv."
  type        = string
  default     = ""
}

variable "redirect_expiry" {
  description = "Lifetime of the SAS URLs blob GETs redirect to (storage.redirect.expiry)."
  type        = string
  default     = "20m"
}

variable "request_body_limit" {
  description = "Largest request body the Functions host accepts (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT); also the advertised chunk limit."
  type        = number
  default     = 104857600
}

variable "extra_app_settings" {
  description = "More REGISTRY_* settings (auth, cache, ...)."
  type        = map(string)
  default     = {}
}

variable "tags" {
  type    = map(string)
  default = {}
}

variable "notifications_eventgrid" {
  description = "Send the registry's events (docs/notifications.md) to an Event Grid custom topic the module creates; the Function App's identity is its \"EventGrid Data Sender\" and the topic's keys are disabled."
  type        = bool
  default     = false
}

variable "eventgrid_topic_name" {
  description = "Name of the topic `notifications_eventgrid` creates; empty: <name>-registry-events."
  type        = string
  default     = ""
}

variable "eventgrid_schema" {
  description = "The topic's input schema and what the registry sends: eventgrid or cloudevents (notifications.eventgrid.schema)."
  type        = string
  default     = "eventgrid"
  validation {
    condition     = contains(["eventgrid", "cloudevents"], var.eventgrid_schema)
    error_message = "eventgrid_schema: eventgrid or cloudevents."
  }
}
