"""The inference node: an untrusted worker that consumes its own queue and publishes results."""
