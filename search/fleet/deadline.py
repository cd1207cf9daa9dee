"""The ingress's call to the query-encoder deployment, with a deadline (no Ray here: a call is an awaitable
with `.cancel()`, as a Serve DeploymentResponse is).

A call that fails or passes its deadline is cancelled and made once more (Serve routes it to a replica that
is up); when that fails too the request answers 503 naming the encoder with a Retry-After
(`EncoderUnavailable`), never a hang. An encoder that may scale to zero gets the cold-start budget on a call
that may wait for a replica to start (`Warmth`, as the shards do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol, TypeVar

from search.fleet.fanout import ShardTiming, Warmth
from search.state import EncoderUnavailable

log = logging.getLogger(__name__)

__all__ = ["AwaitablePending", "call_with_deadline"]

T = TypeVar("T")


class AwaitablePending(Protocol):
    def __await__(self) -> Generator[Any, None, Any]: ...

    def cancel(self) -> None: ...


async def call_with_deadline(name: str, start: Callable[[], AwaitablePending], warmth: Warmth,
                             timing: ShardTiming) -> Any:
    """The answer of `start()`'s call to deployment `name`: the first call within its budget, else one more
    within `timing.timeout_s`, else EncoderUnavailable."""
    last: BaseException | None = None
    for attempt, timeout_s in enumerate((warmth.budget(timing), timing.timeout_s)):
        call = start()
        try:
            out = await asyncio.wait_for(_awaited(call), timeout_s)
        except asyncio.CancelledError:  # the request itself was cancelled (client gone): so is the call
            _cancel_soon(call)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed or late call earns the one retry
            if isinstance(exc, TimeoutError):
                _cancel_soon(call)
                exc = TimeoutError(f"no answer within {timeout_s:g} s")
            last = exc
            if attempt == 0:
                log.warning("%s failed (%s); retrying once", name, _one_line(exc))
            continue
        warmth.answered()
        return out
    assert last is not None
    raise EncoderUnavailable(name, _one_line(last))


async def _awaited(call: Awaitable[T]) -> T:
    return await call


def _cancel_soon(call: AwaitablePending) -> None:
    """Cancel off the event loop: a Serve cancel may wait for the call's replica assignment."""
    def cancel() -> None:
        try:
            call.cancel()
        except Exception as exc:  # noqa: BLE001 - a call that cannot be cancelled is dropped
            log.debug("cancelling an encoder call failed: %s", _one_line(exc))
    asyncio.get_running_loop().run_in_executor(None, cancel)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
