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

output "http_secret" {
  value     = local.http_secret
  sensitive = true
}
