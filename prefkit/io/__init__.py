"""Reading checkpoints (index, lazy shard reader, hub fetch) and writing merged shards."""
