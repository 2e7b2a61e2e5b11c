"""The shard store: writer, reader and validator of the sharded Zarr dataset format."""
