"""The query layer: engine (candidates from BM25 and the vector index, fusion, moments, results), fusion, moments,
rerank (VideoBERT's alignment head), describe (VideoBERT captions for one moment), evaluate (manifests and metrics).
"""
