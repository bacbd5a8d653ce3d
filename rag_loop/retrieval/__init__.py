"""Which chunks answer a query: dense retrieval over the serving index."""
