"""The `python -m indexer` subcommands that operate a store (build, status, takedown, restore); the lab's
commands live in indexer/lab/."""
