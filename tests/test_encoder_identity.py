"""Artifact area: the encoder identity rules shared by the indexer and the service: equality is the one
compatibility rule, the refusal names each differing field, and how a `pretrained` setting is recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from search.artifact.encoder import (
    EncoderIdentity,
    IdentityShape,
    encoder_mismatch,
    file_sha256,
    is_checkpoint_path,
    weights_label,
)

BASE = EncoderIdentity(model="ViT-B-32", weights="openai", checksum="abc", dim=512, context_length=77,
                       preprocess={"size": 224})


def test_round_trip_with_and_without_preprocess():
    assert EncoderIdentity.from_dict(BASE.to_dict()) == BASE
    data = BASE.to_dict()
    del data["preprocess"]
    data["dim"], data["context_length"] = "512", "77"
    parsed = EncoderIdentity.from_dict(data)
    assert parsed.preprocess == {} and parsed.dim == 512 and parsed.context_length == 77


def test_the_key_is_a_short_stable_digest_of_every_field():
    assert len(BASE.key) == 16 and BASE.key == EncoderIdentity.from_dict(BASE.to_dict()).key
    assert BASE.key == "891f296b70c313ca"  # names the store's encoders/<key> folder: a change orphans existing ones
    others = [EncoderIdentity(**{**BASE.to_dict(), field: value}) for field, value in
              (("model", "x"), ("weights", "x"), ("checksum", "x"), ("dim", 1), ("context_length", 1),
               ("preprocess", {"size": 1}))]
    assert len({BASE.key, *(o.key for o in others)}) == 7


def test_mismatch_names_each_differing_field_and_what_was_built():
    assert encoder_mismatch(BASE, EncoderIdentity.from_dict(BASE.to_dict()), "version v1") is None
    other = EncoderIdentity(**{**BASE.to_dict(), "dim": 256, "checksum": "def"})
    assert BASE.differences(other) == ["checksum: 'abc' != 'def'", "dim: 512 != 256"]
    assert encoder_mismatch(BASE, other, "version v1") == (
        "version v1 was built with another encoder: checksum: 'abc' != 'def'; dim: 512 != 256")


@pytest.mark.parametrize(("pretrained", "checkpoint", "label"), [
    (None, False, "random-init"),
    ("random", False, "random-init"),
    ("openai", False, "openai"),
    ("laion2b_s34b_b79k", False, "laion2b_s34b_b79k"),
    ("model.pt", True, "model.pt"),
    ("weights.safetensors", True, "weights.safetensors"),
    ("w.pth", True, "w.pth"),
    ("w.bin", True, "w.bin"),
    ("dir/openai", True, "openai"),
    (f"models{os.sep}tiny", True, "tiny"),
    ("~/ckpt/model.pt", True, "model.pt"),
])
def test_pretrained_settings_are_recorded_as_a_tag_a_file_name_or_random_init(pretrained, checkpoint, label):
    assert is_checkpoint_path(pretrained) is checkpoint
    assert weights_label(pretrained) == label


def test_file_sha256_reads_in_chunks(tmp_path: Path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest() == file_sha256(path, chunk=7)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_identity_shape_reads_dim_and_context_length_off_the_identity():
    class Stand(IdentityShape):
        identity = BASE

    assert (Stand().dim, Stand().context_length) == (512, 77)
