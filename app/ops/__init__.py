"""Watching the gateway: metrics, JSON logs, pool status, process identity."""
