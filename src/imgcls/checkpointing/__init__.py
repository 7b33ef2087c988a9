"""Checkpoints: safe loading of stored configs, resume planning."""
