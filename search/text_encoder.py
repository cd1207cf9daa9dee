"""The text-encoder interface the batcher uses; the implementation is search.runtime.towers.OnnxTextEncoder."""

from search.runtime.towers import OnnxTextEncoder, TextEncoder, token_lengths

__all__ = ["OnnxTextEncoder", "TextEncoder", "token_lengths"]
