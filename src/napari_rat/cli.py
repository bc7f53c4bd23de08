"""The ``napari-rat`` command.

Each subcommand lives in its own module under :mod:`napari_rat.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit code). The modules are discovered, so adding a command never
touches this file. Heavy imports happen inside each command's ``func``, so ``napari-rat --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from napari_rat import __version__
from napari_rat.cpu_priority import session_follows_process_niceness
from napari_rat.errors import CommandError
from napari_rat.job_environment import in_submitted_job
from napari_rat.spelling import did_you_mean

__all__ = ["CommandError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser that takes options only as spelled in full and names the nearest
    valid option for one it does not know.

    Prefixes are refused (``allow_abbrev=False``): ``--headles`` must not run as ``--headless``.
    Subcommand parsers are of this class too (``add_subparsers`` uses the parent's class), and
    each reports its own unknown arguments, so the message carries the subcommand's usage.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            options = list(self._option_string_actions)
            named = [
                arg + did_you_mean(arg.split("=", 1)[0], options) if arg.startswith("-") else arg
                for arg in extras
            ]
            self.error("unrecognized arguments: " + " ".join(named))
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered subcommand."""
    from napari_rat import commands

    parser = _Parser(
        prog="napari-rat",
        description="Resolution Aware Transformer for napari: predict, train, evaluate, "
        "benchmark and convert, headless.",
    )
    parser.add_argument("--version", action="version", version=f"napari-rat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-rat`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    if in_submitted_job():
        # a submitted job: Ray started this entrypoint in a session of its own, at the head's
        # priority; make that priority count against the user's session too
        session_follows_process_niceness()
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"napari-rat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-rat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # `python -m napari_rat.cli` (how a cluster job runs). CommandError lives in
    # napari_rat.errors, so the class the commands raise is the one this module's main() catches.
    sys.exit(main())
