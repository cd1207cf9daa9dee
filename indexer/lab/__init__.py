"""The lab beside the indexer: the synthetic captioned world, tiny-CLIP training and relevance evaluation.

None of it is on the indexing path (`indexer build` never imports it); it produces test inputs, the tiny
model and evaluation reports. Output folders are always arguments: nothing here computes a repo path.
"""
