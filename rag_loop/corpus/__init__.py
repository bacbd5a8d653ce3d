"""Documents in: loading files (loaders), chunking them (chunking), ingesting (ingest)."""
