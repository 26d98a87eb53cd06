"""ML only: tensors in, tensors out; nothing here touches the catalog or its files, nor imports anything of ours outside models.

efficientnet (the EfficientNet-Lite frame backbone), text_encoder (MiniLM sentence vectors, torch + transformers),
onnx_text_encoder (the query encoder: MiniLM exported once to ONNX, run by onnxruntime; torch as fallback),
visual_vocab (hierarchical k-means visual tokens), videobert (the model; videobert_inputs: its batches), cbt,
checkpoint (the one checkpoint format, written to a file object the caller opens). Import the submodules; text_encoder loads torch only when a model loads.
"""
