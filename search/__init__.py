"""The query layer: candidates, fusion, moments, summaries."""
