"""Versions switch together (no Ray here): the ingress's reload asks every shard to load its part of v+1
beside v, and admits v+1 only when every shard reports it ready.

The ingress's ArtifactHolder (search/artifact/reload.py) keeps its own rules: it polls `current`, opens v+1
beside v, and swaps only when every admit hook passes; a refusal keeps v serving with the reason in /readyz and
is retried when a file changes or `current` moves on. `version_gate` is one more admit hook: a shard that
refuses v+1 (a corrupt part, an unreadable file) or does not answer within the budget raises ArtifactError
naming it, so the whole fleet stays on v. Calls made while v serves name v, so nothing switches mid-request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.artifact.manifest import ArtifactError
from search.artifact.version import Artifact
from search.fleet.fanout import Pending

__all__ = ["PartReady", "RemotePrepare", "prepare_all", "refusals", "version_gate"]


@dataclass(frozen=True)
class PartReady:
    """A shard's answer to "load your part of this version": its version name, or why it refused it."""

    version: str
    error: str | None = None


@dataclass(frozen=True)
class RemotePrepare:
    name: str  # the shard deployment's name, as /readyz reports it
    call: Callable[[str], Pending]  # version dir -> a call whose result is a PartReady


def refusals(version: str, answers: Sequence[tuple[str, PartReady | BaseException]]) -> list[str]:
    """Why the fleet cannot switch to `version` (empty: every shard has its part ready). A shard that answered
    with another version, an error, or nothing counts as a refusal: a switch needs every shard's yes."""
    out = []
    for name, answer in answers:
        if isinstance(answer, BaseException):
            first = (str(answer).splitlines() or [""])[0]
            out.append(f"{name} did not answer ({type(answer).__name__}: {first})")
        elif answer.error is not None:
            out.append(f"{name} refused it ({answer.error})")
        elif answer.version != version:
            out.append(f"{name} reported version {answer.version}")
    return out


def prepare_all(shards: Sequence[RemotePrepare], version_dir: str, version: str, timeout_s: float) -> None:
    """Ask every shard at once to load its part of `version_dir` (named `version`); return when all report it
    ready, else raise ArtifactError naming every shard that did not."""
    pending = [(shard.name, shard.call(version_dir)) for shard in shards]
    answers: list[tuple[str, PartReady | BaseException]] = []
    for name, call in pending:
        try:
            answers.append((name, call.result(timeout_s=timeout_s)))
        except Exception as exc:  # noqa: BLE001 - a shard that cannot answer cannot switch
            answers.append((name, exc))
    reasons = refusals(version, answers)
    if reasons:
        raise ArtifactError(f"version {version} not switched to, the fleet stays on the version it "
                            f"serves: {'; '.join(reasons)}")


def version_gate(shards: Sequence[RemotePrepare], timeout_s: float) -> Callable[[Artifact, str | None], None]:
    """The ingress's admit hook: (opened version, version serving now or None). The first version needs no
    gate (each shard replica opens it at its start, and a part that does not open fails that start); every
    later one is admitted only when all shards have it ready."""
    def admit(artifact: Artifact, serving: str | None) -> None:
        if serving is not None:
            prepare_all(shards, str(artifact.path), artifact.version, timeout_s)
    return admit
