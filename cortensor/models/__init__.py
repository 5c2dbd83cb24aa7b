"""Prepared models: the manifest a node reads at run time, and the offline preparation step."""
