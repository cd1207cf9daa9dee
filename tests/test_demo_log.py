"""The demo's log says nothing false or alarming: loading the tiny checkpoint logs no "initialized randomly",
the int8 export logs no quantizer pre-processing hint, and the service's log has no faiss loader probe lines
(whose ImportError text read like a traceback). Each message is checked at its source."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from indexer.models import registry


def test_loading_a_checkpoint_does_not_say_random_init(caplog: pytest.LogCaptureFixture, tmp_path: Path):
    import torch

    from indexer.models.clip import load_encoder

    checkpoint = registry.tiny_checkpoint_path()
    if not checkpoint.is_file():  # a stale committed checkpoint: any saved state dict shows the same thing
        torch.manual_seed(0)
        checkpoint = tmp_path / "tiny.pt"
        torch.save(load_encoder("tiny", pretrained="random", device="cpu").model.state_dict(), checkpoint)
    with caplog.at_level(logging.INFO):
        encoder = load_encoder("tiny", pretrained=str(checkpoint), device="cpu")
    assert "initialized randomly" not in caplog.text and "No pretrained weights" not in caplog.text
    import open_clip

    reference = open_clip.create_model(registry.resolve("tiny", None).model_name, pretrained=None)
    open_clip.load_checkpoint(reference, str(checkpoint))  # the weights really are the file's
    loaded = encoder.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    with caplog.at_level(logging.WARNING):
        load_encoder("tiny", pretrained="random", device="cpu")
    assert "initialized randomly" in caplog.text  # true there, so still said


def _matmul_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8) / 64, name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_int8_export_logs_no_preprocessing_hint(caplog: pytest.LogCaptureFixture, tmp_path: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from indexer.models.export import quantize_int8

    source = _matmul_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING):
        quantize_dynamic(str(source), str(tmp_path / "plain.onnx"), weight_type=QuantType.QInt8)
    assert "pre-processing before quantization" in caplog.text  # what the library says unfiltered
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert quantize_int8(source, tmp_path / "int8.onnx").is_file()
        logging.getLogger().warning("another root warning")  # the filter is gone after the call
    assert "pre-processing" not in caplog.text and "another root warning" in caplog.text


def test_service_log_drops_faiss_loader_probes():
    from search.http.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "text")
        assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
        assert logging.getLogger("faiss.loader").isEnabledFor(logging.WARNING)
        assert logging.getLogger("search").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("faiss.loader").setLevel(logging.NOTSET)
