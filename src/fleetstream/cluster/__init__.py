"""Cluster mode: gateway, worker and api as separate processes over Kafka and PostgreSQL (docs/deploy.md)."""
