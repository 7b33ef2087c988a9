"""The stream path: per-sample decode in loader workers, shards, the split listing it reads."""
