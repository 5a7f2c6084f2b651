"""tagsift learning core: frozen open_clip backbones, cached image features, prompt learning on candidate sets
(prompt alignment, arXiv 2407.07638), PLL objectives, ONNX export. Public API: docs/ml-api.md."""
