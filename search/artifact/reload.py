"""The served index version and its replacement without downtime.

A request takes a lease on the current artifact and keeps using that artifact to the end, even when a reload
swaps in a new one meanwhile; the old artifact is closed when its last lease ends. A new version is opened and
checked completely beside the old one before the single reference swap, so a corrupt or incompatible version
is refused while the old keeps serving, and the reason is kept for /readyz and metrics.

Checks: a reload (a version is already serving) opens the new version at `checks` (full sha256 by default) before
the swap, so its cost never reaches a request. The first version at start opens at `start_checks` (sizes plus
sampled sha256: milliseconds instead of the seconds a 1M-vector store's ~2 GB take to hash) and the full check
then runs in a background thread; a version that fails it is unloaded (503 and /readyz false with the reason,
never wrong answers from a corrupt file) until `current` names another version or an admin reload succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from search.artifact import ann
from search.artifact.bundle import ENCODERS_DIR
from search.artifact.checksums import CHECK_LEVELS, CheckLevel
from search.artifact.encoder import EncoderIdentity
from search.artifact.version import (
    Artifact,
    ArtifactError,
    check_version_files,
    current_link,
    current_path,
    open_version,
)

log = logging.getLogger(__name__)

BackgroundCheck = Literal["none", "running", "passed", "failed"]

__all__ = ["ArtifactHolder", "BackgroundCheck", "NoIndexError", "ReloadOutcome", "watch_current"]


class NoIndexError(RuntimeError):
    """No index version is loaded (the service answers 503)."""


@dataclass(frozen=True)
class ReloadOutcome:
    loaded: bool
    version: str | None
    error: str | None = None


class _Slot:
    """An artifact plus its lease count; closed once retired and unleased."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.leases = 0
        self.retired = False

    def retire(self) -> bool:
        """Under the holder's lock: no new lease will take it; True when none holds it (the caller closes it
        after the lock, else the last lease does)."""
        self.retired = True
        return self.leases == 0


class ArtifactHolder:
    """Holds the current artifact; `lease()` pins it for one request."""

    def __init__(self, store: Path, encoder: EncoderIdentity | None = None, checks: CheckLevel = "size",
                 on_change: Callable[[ReloadOutcome], None] | None = None,
                 ann_params: Mapping[str, int] | None = None,
                 admit: Callable[[Artifact], None] | None = None, start_checks: CheckLevel | None = None):
        """`encoder`: the identity every version must have (None: any); `admit` may refuse an opened version
        (raising ArtifactError) before it is swapped in: the service loads or checks its encoder there.
        `checks`: the file checks before a version serves; `start_checks` (default: the same): a lighter level
        for the first version at start, with `checks` completed in the background."""
        self.store = Path(store)
        self.ann_params = dict(ann_params or {})
        self.encoder = encoder
        self.checks = checks
        self.start_checks = start_checks or checks
        self.on_change = on_change or (lambda outcome: None)
        self.admit = admit
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._slot: _Slot | None = None
        self.loaded_path: Path | None = None
        self.last_error: str | None = None
        self.background_check: BackgroundCheck = "none"  # the state of the last background check
        self._refused: tuple[Path, tuple[tuple[str, int, int], ...]] | None = None  # target + its files' stats
        self._refused_at = 0.0
        self.retry_unchanged_s = 60.0  # an unchanged refused version is still retried this often (transient causes)
        self.unchanged_skips = 0  # polls that found the refused version unchanged (nothing reopened or logged)
        self._checked = threading.Event()
        self._checked.set()

    @property
    def version(self) -> str | None:
        slot = self._slot
        return slot.artifact.version if slot else None

    @contextmanager
    def lease(self) -> Iterator[Artifact]:
        with self._lock:
            slot = self._slot
            if slot is None:
                raise NoIndexError(self.last_error or "no index version is loaded")
            slot.leases += 1
        try:
            yield slot.artifact
        finally:
            with self._lock:
                slot.leases -= 1
                release = slot.retired and slot.leases == 0
            if release:
                slot.artifact.close()

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Open what `STORE/current` points to and swap it in; on failure keep the old. Thread-safe."""
        with self._reload_lock:
            fingerprint: tuple[tuple[str, int, int], ...] = ()
            try:
                target = current_path(self.store)
                if not force and target == self.loaded_path:
                    return ReloadOutcome(False, self.version)
                fingerprint = _fingerprint(self.store, target)
                recent = time.monotonic() - self._refused_at < self.retry_unchanged_s
                if not force and recent and self._refused == (target, fingerprint):
                    self.unchanged_skips += 1  # refused before and no file changed since: it would fail again
                    return ReloadOutcome(False, self.version, self.last_error)
                # the light start level only while nothing serves and no background check has failed yet
                light = self._slot is None and self.background_check != "failed"
                level = self.start_checks if light else self.checks
                artifact = open_version(target, checks=level, expect_encoder=self.encoder)
                self._check_params(artifact)
                self._admit(artifact)
            except Exception as exc:  # any failure to open means: refuse it, keep serving the old version
                if not isinstance(exc, (ArtifactError, OSError)):
                    log.exception("unexpected error opening %s", current_link(self.store))
                self.last_error = str(exc) if isinstance(exc, (ArtifactError, OSError)) else repr(exc)
                self._refused = (target, fingerprint) if fingerprint else None
                self._refused_at = time.monotonic()
                outcome = ReloadOutcome(False, self.version, self.last_error)
                log.error("index reload refused, still serving %s: %s", self.version, exc)
                self.on_change(outcome)
                return outcome
            self._swap(artifact, target)
            self.last_error = None
            self._refused = None
            outcome = ReloadOutcome(True, artifact.version)
            log.info("serving index version %s from %s (%s checks)", artifact.version, target, level)
            self.on_change(outcome)
            if CHECK_LEVELS.index(level) < CHECK_LEVELS.index(self.checks):
                self._start_background_check(artifact)
            return outcome

    def _start_background_check(self, artifact: Artifact) -> None:
        self.background_check = "running"
        self._checked.clear()
        threading.Thread(target=self._background_check, args=(artifact,), name="artifact-check", daemon=True).start()

    def _background_check(self, artifact: Artifact) -> None:
        """The full check of a version already serving; a failure unloads it (if it still serves)."""
        _lower_thread_priority()  # hashing ~2 GB must not take CPU from the queries served meanwhile
        try:
            check_version_files(artifact.path, artifact.manifest, self.checks)
        except (ArtifactError, OSError) as exc:
            with self._reload_lock:
                self.background_check = "failed"
                self._unload(artifact, f"{exc} (found by the {self.checks} check after start; version unloaded)")
        else:
            self.background_check = "passed"
            log.info("index version %s passed its %s checks", artifact.version, self.checks)
        finally:
            self._checked.set()

    def wait_checked(self, timeout: float | None = None) -> bool:
        """Block until no background check runs (tests, benchmarks); False on timeout."""
        return self._checked.wait(timeout)

    def _unload(self, artifact: Artifact, reason: str) -> None:
        with self._lock:
            slot = self._slot
            if slot is None or slot.artifact is not artifact:
                return  # a newer version already replaced it
            self._slot = None
            release = slot.retire()
        if release:
            artifact.close()
        self.last_error = reason
        log.error("index version %s unloaded: %s", artifact.version, reason)
        self.on_change(ReloadOutcome(False, None, reason))

    def _admit(self, artifact: Artifact) -> None:
        if self.admit is None:
            return
        try:
            self.admit(artifact)
        except BaseException:
            artifact.close()
            raise

    def _check_params(self, artifact: Artifact) -> None:
        """Configured per-call FAISS parameters must fit this version's index type (else: refuse it)."""
        if not self.ann_params:
            return
        try:
            ann.search_parameters(artifact.index, self.ann_params)
        except ValueError as exc:
            artifact.close()
            raise ArtifactError(f"version {artifact.version}: configured rank.ann_params do not apply ({exc})") \
                from exc

    def _swap(self, artifact: Artifact, path: Path) -> None:
        with self._lock:
            old, self._slot = self._slot, _Slot(artifact)
            self.loaded_path = path
            release = old is not None and old.retire()
        if old is not None and release:
            old.artifact.close()

    def close(self) -> None:
        with self._lock:
            slot, self._slot = self._slot, None
            release = slot is not None and slot.retire()
        if slot is not None and release:
            slot.artifact.close()


def _fingerprint(store: Path, target: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of every file of the version (its shard folders included) and of the store's encoder
    folders: what a repair, a re-export or a new `current` changes (stat calls only; nothing is read)."""
    parts = sorted(p for p in target.glob("shard-*") if p.is_dir())
    folders = [target, *parts, *sorted(p for p in (store / ENCODERS_DIR).glob("*") if p.is_dir())]
    stats = []
    for folder in folders:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                stats.append((f"{folder.name}/{entry.name}", st.st_size, st.st_mtime_ns))
    return tuple(stats)


def _lower_thread_priority(niceness: int = 10) -> None:
    """Linux: a thread has its own nice value (setpriority on its thread id); elsewhere nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        log.debug("could not lower the priority of the artifact-check thread")


def _current_target(store: Path) -> Path | None:
    try:
        return current_path(store)
    except (ArtifactError, OSError):
        return None


async def watch_current(holder: ArtifactHolder, poll_s: float) -> None:
    """Poll `STORE/current`; reload (in a worker thread) whenever it names another version than the one served.

    Compared with what the holder has loaded, not with what the watcher saw first, so a version published while
    the service was starting is picked up. A refused version is retried on the first poll after any of its
    files (or the encoder folders) change, after `current` moves on, or after `holder.retry_unchanged_s`; in
    between it is neither reopened (a full check of a 1M store hashes ~2 GB) nor logged again.
    """
    while True:
        await asyncio.sleep(poll_s)
        target = _current_target(holder.store)
        if target is not None and target != holder.loaded_path:
            await asyncio.to_thread(holder.reload)
