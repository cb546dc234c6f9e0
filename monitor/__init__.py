"""Monitor role: Prometheus metrics, drift, freshness canary, recall probe and status."""
