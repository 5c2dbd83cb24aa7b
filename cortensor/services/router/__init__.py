"""The router: validates jobs, keeps the node registry, assigns replicas to nodes."""
