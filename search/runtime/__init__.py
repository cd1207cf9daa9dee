"""The service's encoder runtime: everything it needs to turn a query into a vector without torch.

`tokenizer` (open_clip's CLIP tokenizer rebuilt from the artifact's vocabulary and merges), `preprocess`
(Pillow + numpy from the artifact's preprocess spec), `sessions` (ONNX Runtime), `bundle` (the encoder files a
version carries and their verification) and `towers` (text and image towers over those sessions).
"""
