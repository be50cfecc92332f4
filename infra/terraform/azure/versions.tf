terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
  }
}

provider "azurerm" {
  features {}
  # Storage data-plane calls (the container) use Entra ID, not account keys.
  storage_use_azuread = true
}
