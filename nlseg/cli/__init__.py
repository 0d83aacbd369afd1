"""``nlseg train | eval | predict | export | bench | viz | demo | reproduce | list | convert`` — the command-line tool.

One parser tree: each command is a module of this package with ``add_parser(subparsers)`` (its
arguments, each with a help line) and ``run(args)`` (turns them into one typed call of the library).
argparse lives only here. Every user error — an :class:`nlseg.errors.NlsegError` raised anywhere, also
inside a DataLoader worker — is printed as one line on stderr with exit status 2, without a traceback. A
reader that closes the pipe early (``nlseg list models | head``) ends the command quietly, status 141.
The process runs with the memory allocator exactly as a library user gets it: nlseg changes no process-wide
setting (PyTorch's launcher preloads jemalloc or tcmalloc for those who want one: README, "The memory allocator").
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from nlseg.cli.common import error_line, exit_status

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[str, ...] = (
    "train", "eval", "predict", "export", "bench", "viz", "demo", "reproduce", "list", "convert",
)
"""Command names; ``nlseg.cli.<name>`` (``list`` lives in ``nlseg.cli.list_``) holds each."""


def _module(command: str):
    return importlib.import_module(f"nlseg.cli.{command}_" if command == "list" else f"nlseg.cli.{command}")


def _version() -> str:
    import torch

    from nlseg import __version__

    return f"nlseg {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


class _VersionAction(argparse.Action):
    """``--version``, with torch imported only when it is asked for."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole parser tree of ``nlseg``."""
    parser = argparse.ArgumentParser(
        prog="nlseg", description="Semantic segmentation with non-local context blocks (Denoised NL, ANN)."
    )
    parser.add_argument("--version", action=_VersionAction, help="print nlseg's, torch's and Python's versions")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _module(command).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nlseg`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = _module(args.command).run(args)
        sys.stdout.flush()  # a reader that closed the pipe early shows here, not at the interpreter's exit
    except BrokenPipeError:
        return _reader_gone()
    except BaseException as err:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        status = exit_status(err)
        if status is None:
            raise
        # One write with its newline: under torchrun every rank shares one unbuffered stderr, and print's two
        # writes (text, then newline) let another rank's line land between them.
        sys.stderr.write(f"nlseg {args.command}: {error_line(err)}\n")
        sys.stderr.flush()
    return int(status or 0)


def _reader_gone() -> int:
    """``nlseg list models | head``: the reader closed the pipe. Stop quietly, as Unix tools do (killed by
    SIGPIPE, status 141); stdout goes to /dev/null so that the interpreter's last flush does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
