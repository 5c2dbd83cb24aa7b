"""Thin adapters over the brokers. The RabbitMQ and NATS adapters never import each other."""
