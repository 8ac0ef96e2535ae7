"""The webhook delivery worker (`darkroom-webhooks`) and the WebhooksService servicer."""
