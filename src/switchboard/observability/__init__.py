"""What the gateway publishes about itself: Prometheus metrics, the dashboard's live feed, JSON logs."""
