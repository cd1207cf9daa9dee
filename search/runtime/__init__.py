"""The service's encoder runtime: everything it needs to turn a query into a vector without torch.

`tokenizer` (open_clip's CLIP tokenizer rebuilt from the artifact's vocabulary and merges), `preprocess`
(Pillow + numpy from the artifact's preprocess spec), `sessions` (ONNX Runtime), `bundle` (the encoder files a
version carries and their verification), `towers` (text and image towers over those sessions), `threads` (the
process's thread budget), `costs` (the measured cost of an encode backend), `pool` / `members` / `serving`
(the device session pool and its dispatcher) and `batcher` (micro-batching in front of the pool).
"""
