"""The engine behind the surface: the trust boundary, checkpoints and resume, sweeps, streaming
and shards, the feature cache. A run imports only the parts its config uses."""
