"""Cortensor: a decentralized AI inference network with verified, redundant results."""

__version__ = "0.1.0"
