"""Service area: metadata filters on snapshot rows, query cleaning and per-request stage timings (pure functions,
each condition and boundary on its own)."""

from __future__ import annotations

import pytest

from search.query.clean import clean_query
from search.query.filters import Filters, orientation_of
from search.query.timing import StageTimer

PHOTO = {"width": 64, "height": 48, "licence": "CC0-1.0", "tags": '["Red", "circle"]',
         "created_at": "2024-05-01T00:00:00+00:00"}


@pytest.mark.parametrize(("width", "height", "expected"), [
    (64, 48, "landscape"), (48, 64, "portrait"), (50, 50, "square"),
    (0, 48, None), (64, 0, None), (None, 48, None), (64, None, None),
])
def test_orientation_of(width, height, expected):
    assert orientation_of(width, height) == expected


@pytest.mark.parametrize("field", ["orientation", "licence", "tags", "created_after", "created_before"])
def test_any_single_condition_makes_filters_active(field):
    value = ("x",) if field in {"licence", "tags"} else "x"
    assert Filters(**{field: value}).active
    assert not Filters().active
    assert Filters().matches({})


def test_orientation_and_licence():
    assert Filters(orientation="landscape").matches(PHOTO)
    assert not Filters(orientation="square").matches(PHOTO)
    assert not Filters(orientation="landscape").matches({"licence": "CC0-1.0"})  # no size: no orientation
    assert Filters(licence=("CC-BY-4.0", "CC0-1.0")).matches(PHOTO)
    assert not Filters(licence=("CC-BY-4.0",)).matches(PHOTO)
    assert not Filters(licence=("CC0-1.0",)).matches({"width": 1})
    assert Filters(licence=("",)).matches({})  # a missing licence reads as the empty string


@pytest.mark.parametrize(("tags", "wanted", "matches"), [
    ('["Red", "circle"]', ("red",), True),
    ('["Red", "circle"]', ("RED", "Circle"), True),
    ('["Red", "circle"]', ("red", "square"), False),
    (["Red", "circle"], ("circle",), True),  # already a list
    ("[1, 2]", ("1",), True),
    ("not json", ("red",), False),
    ('{"red": 1}', ("red",), False),  # JSON, but not a list
    ('"red"', ("red",), False),
    ("", ("red",), False),
    (None, ("red",), False),
])
def test_every_listed_tag_must_be_present(tags, wanted, matches):
    assert Filters(tags=wanted).matches({"tags": tags}) is matches


def test_date_bounds_after_inclusive_before_exclusive():
    at = "2024-05-01T00:00:00+00:00"
    assert Filters(created_after=at).matches(PHOTO)
    assert not Filters(created_before=at).matches(PHOTO)
    assert Filters(created_after="2024-01-01", created_before="2024-06-01").matches(PHOTO)
    assert not Filters(created_after="2024-06-01").matches(PHOTO)
    assert not Filters(created_before="2024-01-01").matches(PHOTO)


def test_dates_prefer_taken_at_and_an_undated_photo_fails_a_date_bound():
    photo = {"taken_at": "2010-01-01T00:00:00", "created_at": "2024-05-01T00:00:00+00:00"}
    assert Filters(created_before="2011-01-01").matches(photo)
    assert not Filters(created_after="2011-01-01").matches(photo)
    assert not Filters(created_after="2000-01-01").matches({})
    assert not Filters(created_before="2999-01-01").matches({})


@pytest.mark.parametrize(("text", "expected"), [
    ("  red \t\n car  ", "red car"),
    ("red\u200bcar", "redcar"),          # Cf: zero-width space
    ("red\x00\x07car", "redcar"),        # Cc: control characters
    ("red\ue000car", "redcar"),          # Co: private use
    ("red\U000e0fffcar", "redcar"),      # Cn: unassigned
    ("red\ud800car", "redcar"),          # Cs: a lone surrogate
    ("red\ufffdcar", "redcar"),          # the replacement character
    ("red\u00a0car", "red car"),         # a no-break space is whitespace
    ("\u200b\x00 ", ""),
    ("Straße 東京", "Straße 東京"),
])
def test_clean_query(text, expected):
    assert clean_query(text) == expected


def test_stage_timer_adds_up_and_formats():
    timer = StageTimer()
    timer.add("ann", 0.25)
    timer.add("ann", 0.125)
    timer.add("rerank", 0.0015)
    assert timer.seconds == {"ann": 0.375, "rerank": 0.0015}
    assert timer.as_dict() == {"ann": 0.375, "rerank": 0.0015}
    timer.add("encode", 0.123456)
    assert timer.as_dict()["encode"] == 0.1235
    assert timer.milliseconds() == {"ann": 375.0, "rerank": 1.5, "encode": 123.456}
    assert timer.server_timing() == "ann;dur=375.000, rerank;dur=1.500, encode;dur=123.456"
    assert StageTimer().server_timing() == ""
    fine = StageTimer()
    fine.add("tokenize", 0.00012344)
    assert fine.milliseconds() == {"tokenize": 0.123} and fine.server_timing() == "tokenize;dur=0.123"


def test_stage_timer_stage_adds_to_what_was_there_even_on_error():
    timer = StageTimer()
    timer.add("ann", 1.0)
    with timer.stage("ann"):
        pass
    assert timer.seconds["ann"] >= 1.0
    with pytest.raises(RuntimeError), timer.stage("fails"):
        raise RuntimeError("boom")
    assert timer.seconds["fails"] >= 0.0
    assert list(timer.seconds) == ["ann", "fails"]
