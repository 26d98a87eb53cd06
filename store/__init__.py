"""Persistence: the SQL catalog (catalog) and its shared queries (queries), the feature store (features), the BM25
index (lexical), the vector index (vectors/) and crash-safe file writes (files); it imports nothing of ours outside store.
"""
