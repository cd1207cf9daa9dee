"""search/query/spec.py: what a spec left at its defaults asks for, and the depth a page needs."""

from __future__ import annotations

import numpy as np

from search.query.filters import Filters
from search.query.result_cache import page_key
from search.query.spec import SearchSpec


def test_defaults_share_the_page_cache_key_of_the_same_request_spelled_out() -> None:
    # the HTTP routes pass only what a request sets: a request spelling out the defaults must hit the same page
    vector = np.ones(4, np.float32)
    spelled = SearchSpec(k=5, offset=0, filters=Filters(), min_score=None, dedup=False, diversity=0.0,
                         exclude_id=None, phase="full")
    assert SearchSpec(k=5) == spelled
    assert page_key("v1", frozenset(), SearchSpec(k=5), vector) == page_key("v1", frozenset(), spelled, vector)
    assert page_key("v1", frozenset(), SearchSpec(k=5, phase="fast"), vector) != page_key(
        "v1", frozenset(), spelled, vector)


def test_need_is_everything_before_the_page_and_the_page() -> None:
    assert SearchSpec(k=5).need == 5
    assert SearchSpec(k=3, offset=4).need == 7
    assert SearchSpec(k=1, offset=0).need == 1
