"""LightningModules and the plain nets they wrap."""
