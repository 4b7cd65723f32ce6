"""Where alerts are delivered: Slack incoming webhooks and signed generic webhooks."""
