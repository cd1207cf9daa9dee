"""Undo a takedown: `python -m indexer restore --store STORE ID|PATH... --reason TEXT` (recorded like it)."""

from __future__ import annotations

import argparse

from indexer.commands.takedown_cmd import configure, run

__all__ = ["configure", "main"]


def main(args: argparse.Namespace) -> int:
    return run(args, restore=True)
