"""Ingestion and indexing: one module per stage, the job bookkeeping both schedules share, the index sync, training.

Stages: probe, analyse (decode, backbone, clip_features, clips, thumbnails, transcribe), embed, write;
claims (the skip, move and duplicate rules), pipeline (the stage runner and the in-process schedule),
jobs (job rows), tasks (the Celery schedule), sync (the single writer of the search index), wiring
(a deployment's layout, catalog, stores, vector index and embedder), training/ (the joint models).
Import the submodules; model libraries load only where a stage or a model needs them.
"""
