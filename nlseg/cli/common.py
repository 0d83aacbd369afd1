"""What several commands share: the recipe argument, ``--set``, path arguments (``~`` and ``$VAR`` expanded),
output-path checks, error lines."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from nlseg.engine.atomic import disk_full
from nlseg.errors import NlsegError, OutputError
from nlseg.paths import expand_path

__all__ = [
    "add_compile",
    "add_device",
    "add_overrides",
    "add_recipe",
    "check_output_dir",
    "check_output_file",
    "compile_override",
    "error_line",
    "exit_status",
    "path_arg",
]


def path_arg(text: str) -> str:
    """The parser ``type`` of a path argument (``--work-dir``, ``--checkpoint``, ``--input``, ``--output``, ...):
    ``~`` and ``$VAR`` expanded."""
    return expand_path(text)


def pixels(text: str) -> int:
    """argparse type of a size in pixels: a positive whole number (``--max-size``, ``--height``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels, got {text}")
    return value


def add_overrides(parser: argparse.ArgumentParser, what: str = "a recipe field") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable; collected in ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help=f"override {what}, e.g. --set train.iters=1000 data.root=/data (several after one --set; repeatable)",
    )


def add_recipe(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """The positional recipe (a name from ``nlseg list recipes`` or a YAML file) and ``--set``."""
    parser.add_argument(
        "recipe", nargs="?" if optional else None, type=path_arg,
        help="recipe name (see `nlseg list recipes`) or a YAML file",
    )
    add_overrides(parser)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` for the commands that run a trained model (eval, predict, viz)."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)"
    )


def add_compile(parser: argparse.ArgumentParser, *, default: str | None = None, recipe: bool = True) -> None:
    """``--compile {auto,on,off}``: the compiled inference path (inductor, frozen weights); with ``recipe`` it
    sets the recipe's ``eval.compile`` (:func:`compile_override`)."""
    where = "default: the recipe's eval.compile, auto unless it says otherwise" if recipe else f"default: {default}"
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default=default,
        help="run the model compiled (inductor, frozen weights): on, off, or auto: when the job is long enough to "
        f"pay for the compile time, judged after timing the first image eagerly ({where})",
    )


def compile_override(args: argparse.Namespace) -> list[str]:
    """``args.overrides`` with ``--compile`` as ``eval.compile=...`` last (it wins over a ``--set``)."""
    return [*args.overrides, *([f"eval.compile={args.compile}"] if args.compile else [])]


def _writable_folder(folder: Path, flag: str, path: Path) -> None:
    """Raise OutputError unless a file can be created in ``folder`` (which exists)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".nlseg-probe-", dir=folder)
    except OSError as err:
        raise OutputError(f"{flag} {path}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it.

    Args:
        path: the folder a command will write to.
        flag: the option that named it (``--work-dir``, ``--output``, ...), for the error message.

    Raises:
        OutputError: ``path`` is a file, or the folder cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{flag} {path}: cannot create the folder ({err.strerror or err})") from None
    _writable_folder(path, flag, path)
    return path


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check that the file ``path`` can be written (its folder is created if needed); nothing is written.

    Raises:
        OutputError: ``path`` is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; expected a file name")
    check_output_dir(path.parent if str(path.parent) else Path("."), flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: the file exists and is not writable")
    return path


def exit_status(err: BaseException) -> int | None:
    """The exit status for an exception that ends a command, or None for a bug (its traceback is kept).

    User errors (:class:`NlsegError`, a missing file) and a full disk give 2, Ctrl-C 130; an exception with an
    integer ``exit_status`` attribute (a training run stopped by a signal) gives that.
    """
    status = getattr(err, "exit_status", None)
    if isinstance(status, int):
        return status
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, (NlsegError, FileNotFoundError)) or _from_worker(err) or disk_full(err):
        return 2
    return None


def _from_worker(err: BaseException) -> bool:
    """A DataLoader worker re-raises a user error in the main process as its class with a traceback text."""
    return isinstance(err, ValueError) and "Original Traceback" in str(err) and "nlseg.errors." in str(err)


def error_line(err: BaseException) -> str:
    """One line for ``err``: ``error: <message>``; a DataLoader worker's traceback is reduced to its last line."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    text = str(err).strip()
    if "Original Traceback" in text:  # "Caught DatasetError in DataLoader worker process 0. Original Traceback ..."
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if getattr(err, "exit_status", None) is not None:
        return text
    if disk_full(err) and not isinstance(err, NlsegError):  # a log line, a metrics record: not an atomic save
        name = getattr(err, "filename", None)
        return (f"error: no space left on the device{f' writing {name}' if name else ''}; free some and run the "
                "command again (a training run: with --resume, from its last checkpoint)")
    return "error: " + " ".join(text.split())
