"""Checkpoint files: atomic writes, the last checkpoint, resume planning, loading, preemption."""
