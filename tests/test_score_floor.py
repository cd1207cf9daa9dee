"""The weak-match calibration script (indexer/lab/score_floor.py) on the service tests' world store: its report
follows the documented rule, and the floor it finds separates the world's captions from unknown concepts."""

from __future__ import annotations

import math

import numpy as np

from indexer.lab import score_floor


def test_calibration_report_follows_its_rule(world):
    report = score_floor.calibrate(world.store, world.image_root.parent, precision="int8")
    unknown = score_floor.best_similarities(world.store, list(score_floor.UNKNOWN), "int8")
    assert report["score_floor"] == math.ceil(float(np.percentile(unknown, 95)) * 100) / 100
    assert report["unknown"]["n"] == len(score_floor.UNKNOWN)
    assert set(report) >= {"captions", "colour_shape", "shape_background", "single_word"}
    # with the trained tiny model the captions sit above the unknown concepts (a random init would not)
    assert report["captions"]["p50"] > report["unknown"]["p95"]
    assert report["captions"]["flagged_weak"] <= 0.1 and report["unknown"]["flagged_weak"] >= 0.9
