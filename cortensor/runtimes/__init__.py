"""Model runtimes: one small class per task, its session built once per process."""
