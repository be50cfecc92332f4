# Stratus on Azure Functions: a Linux Function App (Python) whose managed identity
# reads and writes the registry container and signs user-delegation SAS URLs for
# blob downloads. No account key is handed to the app.

resource "azurerm_resource_group" "stratus" {
  name     = var.name
  location = var.location
  tags     = var.tags
}

resource "azurerm_storage_account" "registry" {
  name                            = var.storage_account_name
  resource_group_name             = azurerm_resource_group.stratus.name
  location                        = azurerm_resource_group.stratus.location
  account_tier                    = "Standard"
  account_replication_type        = "ZRS"
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  tags                            = var.tags

  blob_properties {
    # Staged blocks of abandoned uploads expire on their own after 7 days; deleted
    # blobs are kept a little while in case of an operator's mistake.
    delete_retention_policy {
      days = 7
    }
  }
}

resource "azurerm_storage_container" "registry" {
  name                  = var.container_name
  storage_account_id    = azurerm_storage_account.registry.id
  container_access_type = "private"
}

resource "azurerm_service_plan" "stratus" {
  name                = "${var.name}-plan"
  resource_group_name = azurerm_resource_group.stratus.name
  location            = azurerm_resource_group.stratus.location
  os_type             = "Linux"
  sku_name            = "Y1" # Consumption
  tags                = var.tags
}

resource "azurerm_application_insights" "stratus" {
  name                = "${var.name}-insights"
  resource_group_name = azurerm_resource_group.stratus.name
  location            = azurerm_resource_group.stratus.location
  application_type    = "other"
  tags                = var.tags
}

# -- http.secret in Key Vault: the app settings hold a reference, not the value --------------

data "azurerm_client_config" "current" {}

resource "azurerm_key_vault" "stratus" {
  name                       = var.key_vault_name != "" ? var.key_vault_name : "${substr(var.storage_account_name, 0, 21)}-kv"
  resource_group_name        = azurerm_resource_group.stratus.name
  location                   = azurerm_resource_group.stratus.location
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  enable_rbac_authorization  = true
  soft_delete_retention_days = 7
  tags                       = var.tags
}

# Whoever runs Terraform writes the secret; the Function App's identity only reads it.
resource "azurerm_role_assignment" "deployer_secrets" {
  scope                = azurerm_key_vault.stratus.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_role_assignment" "app_secrets" {
  scope                = azurerm_key_vault.stratus.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_linux_function_app.stratus.identity[0].principal_id
}

resource "azurerm_key_vault_secret" "http_secret" {
  name         = "http-secret"
  key_vault_id = azurerm_key_vault.stratus.id
  # Given, or generated once without a provider of its own: two random (v4) UUIDs,
  # 244 random bits. uuid() changes on every plan, so later values are ignored: the
  # secret must stay the same while uploads are in flight.
  value        = var.http_secret != "" ? var.http_secret : replace("${uuid()}${uuid()}", "-", "")
  content_type = "Stratus http.secret (signs upload state)"
  depends_on   = [azurerm_role_assignment.deployer_secrets]

  lifecycle {
    ignore_changes = [value]
  }
}

locals {
  # Resolved by the Functions platform with the app's identity (Key Vault reference);
  # versionless, so a new secret version is picked up on the app's next restart.
  http_secret_reference = "@Microsoft.KeyVault(SecretUri=${azurerm_key_vault_secret.http_secret.versionless_id})"
  registry_settings = merge({
    REGISTRY_STORAGE                      = "azure"
    REGISTRY_STORAGE_AZURE_ACCOUNTNAME    = azurerm_storage_account.registry.name
    REGISTRY_STORAGE_AZURE_CONTAINER      = azurerm_storage_container.registry.name
    REGISTRY_STORAGE_AZURE_ROOTDIRECTORY  = var.root_directory
    REGISTRY_STORAGE_REDIRECT_EXPIRY      = var.redirect_expiry
    REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR = "inmemory"
    REGISTRY_HTTP_SECRET                  = local.http_secret_reference
    REGISTRY_LOG_LEVEL                    = "info"
    }, var.notifications_eventgrid ? {
    # notifications.eventgrid: the topic below, no key (the app's identity sends)
    REGISTRY_NOTIFICATIONS_EVENTGRID_ENDPOINT = azurerm_eventgrid_topic.notifications[0].endpoint
    REGISTRY_NOTIFICATIONS_EVENTGRID_SCHEMA   = var.eventgrid_schema
  } : {}, local.proxy_settings, var.extra_app_settings)
}

resource "azurerm_linux_function_app" "stratus" {
  name                = var.name
  resource_group_name = azurerm_resource_group.stratus.name
  location            = azurerm_resource_group.stratus.location
  service_plan_id     = azurerm_service_plan.stratus.id
  https_only          = true
  tags                = var.tags

  # The host's own state (timers, keys) goes to the same account through the identity.
  storage_account_name          = azurerm_storage_account.registry.name
  storage_uses_managed_identity = true

  identity {
    type = "SystemAssigned"
  }

  site_config {
    application_insights_connection_string = azurerm_application_insights.stratus.connection_string
    application_stack {
      python_version = var.python_version
    }
  }

  zip_deploy_file = var.package_path

  app_settings = merge(local.registry_settings, {
    FUNCTIONS_REQUEST_BODY_SIZE_LIMIT = tostring(var.request_body_limit)
    SCM_DO_BUILD_DURING_DEPLOYMENT    = "true" # installs requirements.txt on deployment
    ENABLE_ORYX_BUILD                 = "true"
    AzureWebJobsFeatureFlags          = "EnableWorkerIndexing"
    PYTHON_ENABLE_INIT_INDEXING       = "1" # HTTP streaming (README, Azure Functions)
  })
}

# Blob data access for the registry, which includes generating user delegation keys
# (the SAS of blob redirects), and the roles the Functions host needs on its storage.
resource "azurerm_role_assignment" "registry_data" {
  scope                = azurerm_storage_account.registry.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_linux_function_app.stratus.identity[0].principal_id
}

resource "azurerm_role_assignment" "host_queues" {
  scope                = azurerm_storage_account.registry.id
  role_definition_name = "Storage Queue Data Contributor"
  principal_id         = azurerm_linux_function_app.stratus.identity[0].principal_id
}

resource "azurerm_role_assignment" "host_account" {
  scope                = azurerm_storage_account.registry.id
  role_definition_name = "Storage Account Contributor"
  principal_id         = azurerm_linux_function_app.stratus.identity[0].principal_id
}

# -- notifications on Event Grid (notifications_eventgrid) -------------------------------------

# A custom topic of the registry's own. Its access keys are disabled: the Function App's
# identity sends with "EventGrid Data Sender", so no key sits in the app settings.
resource "azurerm_eventgrid_topic" "notifications" {
  count               = var.notifications_eventgrid ? 1 : 0
  name                = var.eventgrid_topic_name != "" ? var.eventgrid_topic_name : "${var.name}-registry-events"
  resource_group_name = azurerm_resource_group.stratus.name
  location            = azurerm_resource_group.stratus.location
  input_schema        = var.eventgrid_schema == "cloudevents" ? "CloudEventSchemaV1_0" : "EventGridSchema"
  local_auth_enabled  = false
  tags                = var.tags
}

resource "azurerm_role_assignment" "app_eventgrid" {
  count                = var.notifications_eventgrid ? 1 : 0
  scope                = azurerm_eventgrid_topic.notifications[0].id
  role_definition_name = "EventGrid Data Sender"
  principal_id         = azurerm_linux_function_app.stratus.identity[0].principal_id
}
