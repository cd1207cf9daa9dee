"""`python -m indexer <command>`: each command lives in its own module exposing `configure(parser)` and
`main(args) -> int`, so commands can grow without this file becoming a switchboard."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from search.cli import quiet_on_closed_pipe

COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("indexer.lab.world_cmd", "generate the synthetic captioned image world"),
    "train": ("indexer.lab.train_cmd", "train (or load from cache) the project's tiny CLIP"),
    "build": ("indexer.commands.build_cmd", "index an image folder into a store and publish a new index version"),
    "status": ("indexer.commands.status_cmd", "print the store's current version, counts and failures"),
    "takedown": ("indexer.commands.takedown_cmd", "hide images from every service endpoint now (no reindex)"),
    "restore": ("indexer.commands.restore_cmd", "undo a takedown"),
    "evaluate": ("indexer.lab.evaluate_cmd", "run a relevance evaluation and print a JSON report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:  # a command whose module has not landed yet
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.configure(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The entry point; a reader that goes away (`status --json | head -1`) ends it quietly."""

    def run() -> int:
        args = build_parser().parse_args(argv)
        return int(args._module.main(args) or 0)

    return quiet_on_closed_pipe(run)


if __name__ == "__main__":
    sys.exit(main())
