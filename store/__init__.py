"""Persistence: the SQL catalog, the feature store and (later) the vector index."""
