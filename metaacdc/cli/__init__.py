"""The `metaacdc` command: builds a config from arguments and calls the library.

User mistakes (``ConfigError`` and missing files) are reported in one line, exit code 2;
Ctrl-C exits 130 and SIGTERM 143, after the same clean stop.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from metaacdc.cli import curve, data, evaluate, info, train
from metaacdc.errors import ConfigError

SUBCOMMANDS = (info, data, train, evaluate, curve)


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a malformed command line in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="metaacdc", description="MAML over ACDC backbones: few-shot depth curves."
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser
    )
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


#: the entry-point group whose modules register a user's backbones and conv kinds
PLUGIN_GROUP = "metaacdc.plugins"


def load_plugins() -> None:
    """Import the modules that installed packages name in the ``metaacdc.plugins``
    entry-point group, so the backbones and conv kinds they register work from the command
    line (``[project.entry-points."metaacdc.plugins"] mine = "my_package.metaacdc_kinds"``).

    Raises:
        ConfigError: a plugin that cannot be imported, naming it.
    """
    for plugin in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            plugin.load()
        except Exception as error:  # whatever the plugin raises, name the plugin
            raise ConfigError(
                f"plugin {plugin.name!r} ({plugin.value}) failed to load: "
                f"{type(error).__name__}: {error}"
            ) from error


class _PoliteKill:
    """A SIGTERM handler that raises ``KeyboardInterrupt`` as Ctrl-C does (training saves a
    checkpoint, `curve` keeps what is finished) and remembers that it ran, so the command
    can exit 143 (128 + SIGTERM) rather than Ctrl-C's 130."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code: 0, 2 for a user's mistake (one line on
    stderr), 130 after Ctrl-C, 143 after SIGTERM."""
    try:
        load_plugins()
    except ConfigError as error:
        print(f"metaacdc: error: {error}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    # a polite kill (SIGTERM, e.g. a session ending) is handled like Ctrl-C
    polite_kill = _PoliteKill()
    previous = signal.signal(signal.SIGTERM, polite_kill)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError) as error:
        print(f"metaacdc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if polite_kill.received:
            print(f"metaacdc {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return 128 + int(signal.SIGTERM)
        print(f"metaacdc {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
