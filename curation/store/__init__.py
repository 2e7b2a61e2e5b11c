"""The sharded Zarr format: writer, reader, validate, encodings (importing the package registers
the shard codecs with zarr-python, also where the package's entry points are not installed)."""

from curation.store import encodings as _encodings  # noqa: F401  (registers curator.* codecs)
