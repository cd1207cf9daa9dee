"""API keys, stored hashed at rest: the service keeps only sha256 digests and compares digests in constant
time, so a leaked key file gives no usable key. No FastAPI here (search/http/security.py wires it to routes).

Key file: one sha256 hex digest per line, `#` starts a comment. Make a digest with
`python -m search hash-key` (reads the key from stdin) or `printf %s KEY | sha256sum`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from pathlib import Path

__all__ = ["hash_key", "ApiKeys", "load_api_keys", "is_loopback"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """A set of key digests; empty means API keys are off (every caller allowed)."""

    def __init__(self, digests: frozenset[str]):
        self.digests = digests

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def check(self, key: str | None) -> str | None:
        """The matching digest (a stable, non-secret client identity) or None."""
        if key is None:
            return None
        digest = hash_key(key)
        found = None
        for known in self.digests:  # compare all: timing does not tell which digest is close
            if hmac.compare_digest(digest, known):
                found = known
        return found


def _parse(text: str, source: str) -> set[str]:
    digests = set()
    for number, line in enumerate(text.replace(",", "\n").splitlines(), 1):
        line = line.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if not _DIGEST.match(line):
            raise ValueError(f"{source}:{number}: not a sha256 hex digest (store digests, never keys)")
        digests.add(line)
    return digests


def load_api_keys(file: Path | None, env_var: str | None) -> ApiKeys:
    """Digests from the key file and/or the env var (comma-separated); a malformed entry is an error."""
    digests: set[str] = set()
    if file is not None:
        digests |= _parse(Path(file).read_text(encoding="utf-8"), str(file))
    if env_var is not None:
        value = os.environ.get(env_var)
        if value is None:
            raise ValueError(f"access.api_keys_env names ${env_var}, which is not set")
        digests |= _parse(value, f"${env_var}")
    if (file is not None or env_var is not None) and not digests:
        raise ValueError("API keys are configured but no digest was found")
    return ApiKeys(frozenset(digests))


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; False for anything else, including unparsable names."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
