"""The guard: compares redundant results, writes verdicts and reputation."""
