output "registry_url" {
  description = "Base URL of the registry (clients use the host name: docker://<host>/<name>:<tag>)."
  value       = "https://${azurerm_linux_function_app.stratus.default_hostname}"
}

output "function_app_name" {
  value = azurerm_linux_function_app.stratus.name
}

output "storage_account_name" {
  value = azurerm_storage_account.registry.name
}

output "container_name" {
  value = azurerm_storage_container.registry.name
}

output "http_secret_id" {
  description = "The Key Vault secret holding http.secret (read it with `az keyvault secret show --id`)."
  value       = azurerm_key_vault_secret.http_secret.versionless_id
}

output "eventgrid_topic_endpoint" {
  description = "The topic the registry's events go to (empty without notifications_eventgrid)."
  value       = var.notifications_eventgrid ? azurerm_eventgrid_topic.notifications[0].endpoint : ""
}

output "eventgrid_topic_id" {
  description = "Its resource id, for event subscriptions (empty without notifications_eventgrid)."
  value       = var.notifications_eventgrid ? azurerm_eventgrid_topic.notifications[0].id : ""
}
