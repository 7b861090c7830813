"""`POST /v1/embeddings`: embedding experts (an OpenAI-compatible upstream, or a local sentence-transformers
model on onnxruntime) behind one small engine interface (docs/embeddings.md)."""
