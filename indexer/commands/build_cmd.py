"""Index the image folder tree under --images into --store and publish a new index version there.

Prints the run report as JSON on stdout (also saved under STORE/runs/, and to --report; on exit 2 only there).
Exit codes (the nightly contract, indexer/run/nightly.py): 0 published or nothing to do; 1 finished with more new
failures than --max-new-failures; 2 could not run (bad settings, weights unavailable, missing folder, read-only or busy
store), with one line on stderr and no traceback. --metrics-file writes a node_exporter textfile.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.artifact.encoder import IdentityShape

if TYPE_CHECKING:
    from indexer.models.clip import ClipEncoder


EXIT_CANNOT_RUN = 2  # == indexer.run.nightly.EXIT_CANNOT_RUN


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="root of the image folder tree")
    parser.add_argument("--store", type=Path, required=True, help="store directory (created if absent)")
    parser.add_argument("--config", type=Path, help="indexer YAML (default configs/indexer.yaml)")
    parser.add_argument("--model", help="tiny | an open_clip model name, e.g. ViT-B-32 | local-dir:DIR (open_clip's "
                                        "folder layout) | hf-hub:org/repo")
    parser.add_argument("--pretrained", help="open_clip tag, checkpoint path, or 'random'")
    parser.add_argument("--device", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="images per encode/commit batch")
    parser.add_argument("--workers", type=int, help="decode worker processes")
    parser.add_argument("--overflow-workers", type=int, dest="overflow_workers",
                        help="CPU ONNX sessions that take batches when the GPU queue is full (default 1 on CUDA)")
    parser.add_argument("--image-backend", dest="image_backend", choices=("auto", "torch", "onnx"),
                        help="image tower runtime: auto (ONNX Runtime on CPU, torch on CUDA), torch or onnx")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local worker processes, or a Ray Data pipeline (needs the [distributed] extra)")
    parser.add_argument("--ray-address", dest="ray_address",
                        help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local Ray")
    parser.add_argument("--shards", type=int, default=None,
                        help="parts of the published version (default: the index config's, 1); a different count "
                             "than the current version's republishes it from the stored embeddings, no encode")
    parser.add_argument("--max-new-failures", dest="max_new_failures", type=int, default=None,
                        help="exit 1 when more images than this fail in this run (default: no limit)")
    parser.add_argument("--report", type=Path, help="also write the run report (JSON) to this file")
    parser.add_argument("--metrics-file", dest="metrics_file", type=Path,
                        help="Prometheus textfile to write (node_exporter textfile collector), e.g. "
                             "/var/lib/prometheus/node-exporter/photostock_indexer.prom")


def main(args: argparse.Namespace) -> int:
    """Run one build; whatever happens, write the report (and metrics) and return the contract's exit code."""
    import time
    import traceback
    from datetime import UTC, datetime

    from indexer.run import nightly

    started, clock = datetime.now(UTC), time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("indexer").setLevel(logging.INFO)
    try:
        report = _build(args)
        code = nightly.exit_code_for(report, args.max_new_failures)
    except CannotRun as exc:
        message = " ".join(str(exc).split())  # one line, whatever the library wrote
        report, code = nightly.failure_report(started, args.images, args.store, message), nightly.EXIT_CANNOT_RUN
    except Exception as exc:  # a bug, not bad input: one line here, the traceback in the run report
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        report = nightly.failure_report(started, args.images, args.store, message, traceback.format_exc())
        code = nightly.EXIT_CANNOT_RUN
    report["exit_code"] = code
    if code == nightly.EXIT_NEW_FAILURES:
        report["error"] = (f"{report['counts'].get('failed_this_run')} new failures, more than "
                           f"--max-new-failures {args.max_new_failures}")
    report["reports"] = nightly.write_report(report, args.store, args.report)
    if args.metrics_file is not None:
        try:
            nightly.write_metrics(args.metrics_file, report, code, time.perf_counter() - clock)
        except OSError as exc:
            print(f"warning: metrics file not written: {exc}", file=sys.stderr)
    if report.get("error"):
        print("error: " + report["error"], file=sys.stderr)
    if code != nightly.EXIT_CANNOT_RUN:  # exit 2: stdout stays empty; the report is in STORE/runs or --report
        print(json.dumps(report, indent=2, sort_keys=True))
    return code


class CannotRun(RuntimeError):
    """Exit 2: the run could not start or continue (the message is the one line shown)."""


def _build(args: argparse.Namespace) -> dict[str, Any]:
    import sqlite3

    from indexer.run.pipeline import StoreBusyError, StoreReadOnlyError, run_build
    from indexer.run.ray_backend import RayBackendError, RayUnavailableError, stage_for_backend
    from indexer.settings import SettingsError, load_settings
    from indexer.storage.store import StoreError
    from search.artifact.encoder import EncoderNotServableError, WeightsUnavailableError

    overrides = {k: getattr(args, k)
                 for k in ("model", "pretrained", "device", "batch_size", "workers", "image_backend",
                           "overflow_workers")}
    from search.artifact.ann import FaissMissing, require_faiss

    try:
        require_faiss()  # the index build and publish need it: one line now, not a traceback after encoding
        if args.max_new_failures is not None and args.max_new_failures < 0:
            raise SettingsError("--max-new-failures must be 0 or more")
        settings = load_settings(args.config, overrides)
        if args.shards is not None:
            if args.shards < 1:
                raise SettingsError("--shards must be 1 or more")
            settings = settings.model_copy(update={"index": {**settings.index, "shards": args.shards}})
        encode_stage = stage_for_backend(args.backend, args.ray_address)  # fails fast if Ray is missing
        encoder = _encoder_for(args.store, settings, lazy=args.backend == "local")
        report = run_build(args.images, args.store, settings, encoder, encode_stage=encode_stage)
        _remember_fingerprint(args.store, settings, encoder.identity)
        return report
    except EncoderFingerprintError as exc:
        _forget_fingerprint(args.store)
        raise CannotRun(str(exc)) from exc
    except (FaissMissing, SettingsError, WeightsUnavailableError, EncoderNotServableError, StoreBusyError,
            StoreReadOnlyError, StoreError, NotADirectoryError, FileNotFoundError, RayUnavailableError,
            RayBackendError) as exc:
        raise CannotRun(str(exc)) from exc
    except (PermissionError, sqlite3.OperationalError) as exc:
        raise CannotRun(f"store {args.store} cannot be written: {exc}") from exc


def _load_encoder(model: str, pretrained: str | None, device: str) -> ClipEncoder:
    """Check the model and device first so a typo is one clear line, not a stack trace.

    An open_clip model without --pretrained gets its first published tag (an index built from random weights
    by accident would be useless). Random init is seeded: its identity says "random-init", so every run must
    get the same weights, or a resumed run would mix embeddings of two networks under one identity.
    """
    import open_clip
    import torch

    from indexer.models import registry
    from indexer.models.clip import load_encoder
    from indexer.settings import SettingsError
    from search.artifact.encoder import WeightsUnavailableError

    if device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda was requested but no CUDA device is available (use auto or cpu)")
    if registry.is_model_folder(model):
        from indexer.models.export import check_servable

        encoder = load_encoder(model, pretrained, device)
        check_servable(encoder)  # refused now, before anything is encoded, rather than at publish
        return encoder
    if model not in registry.TINY_ALIASES:
        registry.register_project_models()
        if model not in open_clip.list_models():
            raise SettingsError(f"unknown model {model!r}: use tiny or an open_clip model name such as ViT-B-32")
        if pretrained is None:
            tags = open_clip.list_pretrained_tags_by_model(model)
            if not tags:
                raise WeightsUnavailableError(f"no published weights for {model}: pass --pretrained PATH")
            pretrained = tags[0]
    if pretrained == "random":
        torch.manual_seed(0)
    return load_encoder(model, pretrained, device)


class EncoderFingerprintError(RuntimeError):
    """The remembered identity was wrong; the fingerprint is forgotten so the next run loads eagerly."""


class LazyEncoder(IdentityShape):
    """Stands in for a ClipEncoder whose identity the store already knows (same model, weights file and
    library versions as its last run): a no-op rerun then never imports torch or builds the model. The real
    encoder is loaded on first use and must have exactly the remembered identity."""

    def __init__(self, identity: Any, load: Callable[[], Any]):
        self.identity = identity
        self._load = load
        self._real: Any = None

    def __reduce__(self) -> tuple[Callable[[Any], Any], tuple[Any]]:
        """Pickling or copying ships the real encoder (a loader closure cannot travel)."""
        return _same, (self._encoder(),)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._encoder(), name)

    def _encoder(self) -> Any:
        if self._real is None:
            real = self._load()
            if real.identity != self.identity:
                raise EncoderFingerprintError(
                    "the encoder's identity changed although its fingerprint did not (rerun to re-encode): "
                    + "; ".join(real.identity.differences(self.identity))
                )
            self._real = real
        return self._real


def _same(value: Any) -> Any:
    return value


def _fingerprint(model: str, pretrained: str | None) -> str | None:
    """What the encoder's identity depends on, computable without torch; None when it cannot be known."""
    from importlib.metadata import version

    from indexer.models import registry
    from search.artifact.encoder import file_sha256, is_checkpoint_path

    if registry.is_model_folder(model):  # the folder's files are digested when the model loads
        return None
    parts: dict[str, Any] = {"model": model, "pretrained": pretrained, "open_clip": version("open_clip_torch"),
                             "torch": version("torch")}
    checkpoint: Path | None = None
    if model in registry.TINY_ALIASES:
        parts["config"] = file_sha256(registry.MODELS_DIR / f"{registry.TINY_MODEL_NAME}.json")
        checkpoint = registry.tiny_checkpoint_path() if pretrained is None else None
    if is_checkpoint_path(pretrained):  # search.artifact.encoder's one rule: a file, not an open_clip tag
        assert pretrained is not None
        checkpoint = Path(pretrained).expanduser()
    if checkpoint is not None:
        if not checkpoint.is_file():
            return None
        st = checkpoint.stat()
        parts["checkpoint"] = [str(checkpoint.resolve()), st.st_size, st.st_mtime_ns]
    return json.dumps(parts, sort_keys=True)


def _encoder_for(store: Path, settings: Any, lazy: bool = True) -> Any:
    """A LazyEncoder when the store remembers this fingerprint's identity, else the loaded encoder."""
    from indexer.storage.store import DB_NAME, MetadataStore, connect
    from search.artifact.encoder import EncoderIdentity

    def load() -> Any:
        return _load_encoder(settings.model, settings.pretrained, settings.device)

    def eager() -> Any:
        if lazy:  # local backend, unknown encoder: everything will be encoded, so start the decode server now
            from indexer.ingest.decode import start_decode_server

            start_decode_server()
        return load()

    fingerprint = _fingerprint(settings.model, settings.pretrained)
    db_path = Path(store) / DB_NAME
    if not lazy or fingerprint is None or not db_path.is_file():
        return eager()
    db = MetadataStore(connect(db_path, readonly=True))
    try:
        known, identity = db.get_meta("encoder_fingerprint"), db.get_meta("encoder")
    finally:
        db.close()
    if known != fingerprint or identity is None:
        return eager()
    return LazyEncoder(EncoderIdentity.from_dict(json.loads(identity)), load)


def _remember_fingerprint(store: Path, settings: Any, identity: Any) -> None:
    """After a completed run, remember which fingerprint produced the store's encoder identity."""
    from indexer.storage.store import DB_NAME, MetadataStore

    fingerprint = _fingerprint(settings.model, settings.pretrained)
    db = MetadataStore.open(Path(store) / DB_NAME)
    try:
        if fingerprint is not None and db.get_meta("encoder_key") == identity.key:
            db.update_meta({"encoder_fingerprint": fingerprint})
    finally:
        db.close()


def _forget_fingerprint(store: Path) -> None:
    from indexer.storage.store import DB_NAME, MetadataStore

    db = MetadataStore.open(Path(store) / DB_NAME)
    try:
        db.delete_meta("encoder_fingerprint")
    finally:
        db.close()
