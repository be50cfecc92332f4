# Notifications on EventBridge (notifications_eventbridge): a bus of the registry's own,
# which the registry function sends its events to with PutEvents during the request
# (docs/notifications.md: what that adds to a request). Rules and targets on the bus are
# the user's: this module only creates the bus, the grant (main.tf, "Notifications") and
# the function's environment (main.tf, local.environment).

locals {
  eventbridge_bus_name = var.eventbridge_bus_name != "" ? var.eventbridge_bus_name : "${var.name}-registry-events"
}

resource "aws_cloudwatch_event_bus" "notifications" {
  count = var.notifications_eventbridge ? 1 : 0
  name  = local.eventbridge_bus_name
  tags  = var.tags
}

# In a VPC without a NAT, PutEvents goes through an interface endpoint (the secret's
# security group rules let the functions reach it).
resource "aws_vpc_endpoint" "events" {
  count               = var.notifications_eventbridge && local.endpoints ? 1 : 0
  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${var.region}.events"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true
  tags                = merge(var.tags, { Name = "${var.name}-events" })
}
