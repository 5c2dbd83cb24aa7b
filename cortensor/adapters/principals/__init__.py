"""Principals on the servers: RabbitMQ users and their permissions (through
`rabbitmqctl`), and NATS users and their subject permissions (the authorization file
of the project's nats-server). `cortensor credentials` issues and revokes them.
"""
