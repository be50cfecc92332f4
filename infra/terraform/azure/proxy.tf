# The pull-through cache (docs/proxy.md): the reference's single upstream, or upstreams
# by repository prefix. Empty values are left out of the app settings.

variable "proxy_remoteurl" {
  description = "proxy.remoteurl: mirror every repository from this registry (empty: no proxy, or proxy_upstreams)."
  type        = string
  default     = ""
}

variable "proxy_username" {
  description = "proxy.username for proxy_remoteurl."
  type        = string
  default     = ""
}

variable "proxy_password" {
  description = "proxy.password for proxy_remoteurl."
  type        = string
  default     = ""
  sensitive   = true
}

variable "proxy_ttl" {
  description = "proxy.ttl: how long a cached tag is served before it is checked upstream (e.g. 10m)."
  type        = string
  default     = ""
}

variable "proxy_inlinelimit" {
  description = "proxy.inlinelimit: an uncached blob up to this size is copied within the request; a larger one by another invocation (Functions: responses up to 100 MB) (e.g. 256MiB)."
  type        = string
  default     = ""
}

variable "proxy_leasettl" {
  description = "proxy.leasettl: how long one instance's lease on an upstream blob fetch lasts unless renewed; how soon another takes over from a dead one (e.g. 30s)."
  type        = string
  default     = ""
}

variable "proxy_upstreams" {
  description = "proxy.upstreams: mirrors by repository prefix, e.g. [{prefix = \"docker.io/\", remoteurl = \"https://registry-1.docker.io\"}]."
  type = list(object({
    prefix    = string
    remoteurl = string
    username  = optional(string, "")
    password  = optional(string, "")
    ttl       = optional(string, "")
  }))
  default   = []
  sensitive = true

  validation {
    condition     = alltrue([for u in var.proxy_upstreams : endswith(u.prefix, "/")])
    error_message = "proxy_upstreams: every prefix ends in '/' (docker.io/)."
  }
}

locals {
  proxy_settings_all = merge(
    {
      REGISTRY_PROXY_REMOTEURL   = var.proxy_remoteurl
      REGISTRY_PROXY_USERNAME    = var.proxy_username
      REGISTRY_PROXY_PASSWORD    = var.proxy_password
      REGISTRY_PROXY_TTL         = var.proxy_ttl
      REGISTRY_PROXY_INLINELIMIT = var.proxy_inlinelimit
      REGISTRY_PROXY_LEASETTL    = var.proxy_leasettl
    },
    [for i, u in var.proxy_upstreams : {
      "REGISTRY_PROXY_UPSTREAMS_${i}_PREFIX"    = u.prefix
      "REGISTRY_PROXY_UPSTREAMS_${i}_REMOTEURL" = u.remoteurl
      "REGISTRY_PROXY_UPSTREAMS_${i}_USERNAME"  = u.username
      "REGISTRY_PROXY_UPSTREAMS_${i}_PASSWORD"  = u.password
      "REGISTRY_PROXY_UPSTREAMS_${i}_TTL"       = u.ttl
    }]...
  )
  # an empty setting would still be an override: leave it out, as the AWS module does
  proxy_settings = { for k, v in local.proxy_settings_all : k => v if v != "" }
}
