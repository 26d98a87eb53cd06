"""Ingestion: one module per pipeline stage (probe, decode, clips, transcribe, features, thumbnails, write)."""
