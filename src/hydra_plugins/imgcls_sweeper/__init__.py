"""Hydra plugins of the imgcls template (Hydra discovers plugins under ``hydra_plugins``)."""
