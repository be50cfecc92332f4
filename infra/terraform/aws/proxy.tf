# The pull-through cache (docs/proxy.md): the reference's single upstream, or upstreams
# by repository prefix. Empty values are left out of the functions' environment.
#
# Upstream passwords are never in the functions' environment (as the http secret and
# the Redis AUTH token are not): a password given here is stored in an SSM SecureString
# (/<name>/proxy/password, /<name>/proxy/upstreams/<i>/password) and the functions get
# its name (REGISTRY_PROXY_PASSWORDPARAMETER, REGISTRY_PROXY_UPSTREAMS_<i>_PASSWORDPARAMETER),
# reading it with their role when an upstream first asks for credentials. A password
# already kept elsewhere is named instead (proxy_password_parameter, an upstream's
# password_parameter: an SSM parameter, or a Secrets Manager secret as
# secretsmanager:<name> or its ARN). The role may read those parameters and no other
# (the ProxyPasswords policy below). A password given here is in the Terraform state, as
# every SSM parameter's value is: keep the state encrypted, or name a parameter.

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

variable "proxy_password_parameter" {
  description = "Where proxy_remoteurl's password is kept instead of proxy_password: an SSM parameter name, or a Secrets Manager secret (secretsmanager:<name> or its ARN)."
  type        = string
  default     = ""
}

variable "proxy_leasettl" {
  description = "proxy.leasettl: how long one instance's lease on an upstream blob fetch lasts unless renewed; how soon another takes over from a dead one (e.g. 30s)."
  type        = string
  default     = ""
}

variable "proxy_ttl" {
  description = "proxy.ttl: how long a cached tag is served before it is checked upstream (e.g. 10m)."
  type        = string
  default     = ""
}

variable "proxy_inlinelimit" {
  description = "proxy.inlinelimit: an uncached blob up to this size is copied within the request; a larger one by another invocation (e.g. 256MiB)."
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
    # where the password is kept instead of password (as proxy_password_parameter)
    password_parameter = optional(string, "")
  }))
  default   = []
  sensitive = true

  validation {
    condition     = alltrue([for u in var.proxy_upstreams : endswith(u.prefix, "/")])
    error_message = "proxy_upstreams: every prefix ends in '/' (docker.io/)."
  }
  validation {
    condition     = alltrue([for u in var.proxy_upstreams : u.password == "" || u.password_parameter == ""])
    error_message = "proxy_upstreams: password or password_parameter, not both."
  }
}

# -- the passwords, as SSM SecureStrings the functions read ----------------------------------

resource "aws_ssm_parameter" "proxy_password" {
  # whether a password was given is not a secret; the password is
  count       = nonsensitive(var.proxy_password != "") ? 1 : 0
  name        = local.proxy_password_name
  description = "Password of the Stratus pull-through cache's upstream (proxy.password)."
  type        = "SecureString"
  value       = var.proxy_password
  tags        = var.tags
}

resource "aws_ssm_parameter" "proxy_upstream_password" {
  for_each    = nonsensitive(toset([for i, u in var.proxy_upstreams : tostring(i) if u.password != ""]))
  name        = local.proxy_upstream_password_names[tonumber(each.key)]
  description = "Password of the Stratus pull-through cache's upstream ${nonsensitive(var.proxy_upstreams[tonumber(each.key)].prefix)}."
  type        = "SecureString"
  value       = var.proxy_upstreams[tonumber(each.key)].password
  tags        = var.tags
}

locals {
  # names known before apply (the functions read them lazily, after the apply made them)
  proxy_password_name           = "/${var.name}/proxy/password"
  proxy_upstream_password_names = [for i in range(length(nonsensitive(var.proxy_upstreams))) : "/${var.name}/proxy/upstreams/${i}/password"]
  proxy_password_parameter      = nonsensitive(var.proxy_password != "") ? local.proxy_password_name : var.proxy_password_parameter
  proxy_upstream_password_parameters = [for i, u in nonsensitive(var.proxy_upstreams) :
    u.password != "" ? local.proxy_upstream_password_names[i] : u.password_parameter
  ]
  # every parameter the functions may read (the http secret's rules, main.tf): its service
  # and, unless given as an ARN, what follows the account in its ARN
  proxy_password_grants = [for name in distinct(compact(concat([local.proxy_password_parameter],
    local.proxy_upstream_password_parameters))) : {
    service = can(regex("^(arn:[^:]+:secretsmanager:|secretsmanager:)", name)) ? "secretsmanager" : "ssm"
    arn = startswith(name, "arn:") ? (
      # a secret's ARN ends in -<6 random characters>, which a name does not know
      can(regex("^arn:[^:]+:secretsmanager:", name)) && !can(regex("-[A-Za-z0-9]{6}$", name)) ? "${name}-??????" : name
    ) : ""
    path = (startswith(name, "arn:") ? "" : can(regex("^secretsmanager:", name))
      ? "secret:${trimprefix(name, "secretsmanager:")}-??????"
    : "parameter/${trimprefix(trimprefix(name, "ssm:"), "/")}")
  }]
}

data "aws_iam_policy_document" "proxy_passwords" {
  count = length(local.proxy_password_grants) > 0 ? 1 : 0
  dynamic "statement" {
    for_each = toset([for g in local.proxy_password_grants : g.service])
    content {
      sid     = statement.value == "ssm" ? "ProxyPasswordsSsm" : "ProxyPasswordsSecretsManager"
      actions = statement.value == "ssm" ? ["ssm:GetParameter"] : ["secretsmanager:GetSecretValue"]
      resources = [for g in local.proxy_password_grants :
        g.arn != "" ? g.arn : "${local.arn_prefix}:${g.service}:${var.region}:${local.account}:${g.path}"
      if g.service == statement.value]
    }
  }
}

resource "aws_iam_role_policy" "proxy_passwords" {
  count  = length(local.proxy_password_grants) > 0 ? 1 : 0
  name   = "${var.name}-proxy-passwords"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.proxy_passwords[0].json
}

locals {
  proxy_environment = merge(
    {
      REGISTRY_PROXY_REMOTEURL         = var.proxy_remoteurl
      REGISTRY_PROXY_USERNAME          = var.proxy_username
      REGISTRY_PROXY_PASSWORDPARAMETER = var.proxy_remoteurl == "" ? "" : local.proxy_password_parameter
      REGISTRY_PROXY_TTL               = var.proxy_ttl
      REGISTRY_PROXY_INLINELIMIT       = var.proxy_inlinelimit
      REGISTRY_PROXY_LEASETTL          = var.proxy_leasettl
    },
    [for i, u in var.proxy_upstreams : {
      "REGISTRY_PROXY_UPSTREAMS_${i}_PREFIX"            = u.prefix
      "REGISTRY_PROXY_UPSTREAMS_${i}_REMOTEURL"         = u.remoteurl
      "REGISTRY_PROXY_UPSTREAMS_${i}_USERNAME"          = u.username
      "REGISTRY_PROXY_UPSTREAMS_${i}_PASSWORDPARAMETER" = local.proxy_upstream_password_parameters[i]
      "REGISTRY_PROXY_UPSTREAMS_${i}_TTL"               = u.ttl
    }]...
  )
}
