"""The runtime tokenizer (tokenizers BPE over the exported vocabulary and merges, open_clip's clean and split
rules) equals open_clip's own tokenizer token for token, for the tiny model's cut-down merges and for the full
CLIP vocabulary ViT-B-32 uses, under every clean rule."""

from __future__ import annotations

import random

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from indexer.models import registry
from indexer.models.export import tokenizer_spec, write_tokenizer
from search.runtime.tokenizer import ClipTokenizer

CORPUS = [
    "a photo of a cat",
    "A Photo OF a CAT on the BEACH at Sunset",
    "Ünïcödé café naïve résumé Ångström straße ÆØÅ",
    "東京の夜景 北京烤鸭 서울 풍경 Москва ночью مرحبا עברית ภาษาไทย",
    "emoji 😀🐱‍👤 👩🏽‍🚀 🇫🇷 ❤️ ✨✨",
    "HTML &amp; entities &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;x&#39; &amp;amp; &nbsp;x &eacute;",
    "mojibake: cafÃ© donâ€™t",
    "it's they're we've I'm you'll he'd DON'T",
    "numbers 1234567 3.14159 ½ ² ١٢٣ 一二三",
    "punctuation!!! ??? ... --- ___ ~~~ @#$%^&*() [brackets] {braces} <angles>",
    "tabs\tand\nnewlines\r\n  and   spaces  ",
    "<start_of_text> inside text <end_of_text> and <START_OF_TEXT>",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ ｋａｔａｋａｎａ ﾊﾝｶｸ",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    " ".join(["overlong"] * 100),
    "x" * 500,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "",
    "   ",
    "&nbsp;",
    "&amp;nbsp; &#160;",
    "\n\t\r",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings over ASCII, Latin-1, CJK, emoji, combining marks, entities and whitespace."""
    rng = random.Random(seed)
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x300, 0x370), range(0x4E00, 0x4E80),
             range(0x1F600, 0x1F650), range(0x0600, 0x0650), [0x09, 0x0A, 0x20, 0x3000, 0x200B]]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.05:
                parts.append(rng.choice(["&amp;", "&lt;", "&#x1F600;", "&nbsp;", "'s", "<end_of_text>"]))
            else:
                parts.append(chr(rng.choice(rng.choice(pools))))
        out.append("".join(parts))
    return out


def _tokenizers() -> dict[str, SimpleTokenizer]:
    return {
        "tiny": registry.tiny_tokenizer(),
        "full": SimpleTokenizer(),
        "full-whitespace": SimpleTokenizer(clean="whitespace"),
        "full-canonicalize": SimpleTokenizer(clean="canonicalize"),
        "short-context": SimpleTokenizer(context_length=8),
    }


@pytest.fixture(scope="module", params=list(_tokenizers()))
def pair(request, tmp_path_factory):
    reference = _tokenizers()[request.param]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    write_tokenizer(reference, path)
    return reference, ClipTokenizer.load(tokenizer_spec(reference), path)


def test_equal_to_open_clip_on_the_corpus(pair):
    reference, runtime = pair
    expected = reference(CORPUS).numpy()
    got = runtime(CORPUS)
    assert got.dtype == np.int64 and got.shape == expected.shape
    for text, want, have in zip(CORPUS, expected, got, strict=True):
        assert have.tolist() == want.tolist(), text


def test_equal_to_open_clip_on_random_unicode(pair):
    reference, runtime = pair
    texts = _random_texts(300)
    np.testing.assert_array_equal(runtime(texts), reference(texts).numpy())


def test_overlong_text_is_truncated_with_the_end_token_last(pair):
    reference, runtime = pair
    row = runtime([" ".join(["word"] * 200)])[0]
    assert row[0] == runtime.spec.sot_id and row[-1] == runtime.spec.eot_id and (row != 0).all()


def test_text_that_cleans_to_nothing_has_no_tokens(pair):
    _, runtime = pair
    for text in ["", "   ", "&nbsp;", "&amp;nbsp; &#160;", "\n\t"]:
        assert runtime.encode(text) == []
        assert runtime([text])[0][:3].tolist() == [runtime.spec.sot_id, runtime.spec.eot_id, 0]
