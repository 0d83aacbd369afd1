"""The parser tree of ``nlseg``: a help line for every option, ``--version``, ``--set``, ``nlseg list``."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import nlseg
from nlseg.cli import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


def _walk(parser: argparse.ArgumentParser, path: str = "nlseg"):
    """(command path, parser) for the parser and every parser below it."""
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from _walk(sub, f"{path} {name}")


def test_every_option_of_every_command_has_a_help_line() -> None:
    parsers = dict(_walk(build_parser()))
    assert {f"nlseg {c}" for c in COMMANDS} <= set(parsers)
    missing = []
    for path, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{path} {name}" for name in action.choices if name not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without a help line: {missing}"


def test_version_prints_the_version_and_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code in (0, None)
    assert capsys.readouterr().out.startswith(f"nlseg {nlseg.__version__} (torch ")
    done = subprocess.run([sys.executable, "-m", "nlseg", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith(f"nlseg {nlseg.__version__} ")


@pytest.mark.parametrize("argv", [
    ["demo", "--set", "a=1", "b=2", "--set", "c=3"],
    ["train", "demo", "--work-dir", "w", "--set", "a=1", "b=2", "--set", "c=3"],
    ["train", "demo", "--set", "a=1", "--work-dir", "w", "--set", "b=2", "c=3"],
])
def test_set_takes_several_pairs_and_repeats(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).overrides == ["a=1", "b=2", "c=3"]


def test_every_command_with_a_recipe_collects_set_the_same_way() -> None:
    for path, parser in _walk(build_parser()):
        sets = [a for a in parser._actions if "--set" in a.option_strings]
        for action in sets:
            assert (action.dest, action.nargs, action.default) == ("overrides", "+", []), path


def _listed(capsys, what: str) -> list[str]:
    assert main(["list", what]) == 0
    return capsys.readouterr().out.split()


def test_list_recipes_names_every_shipped_recipe(capsys) -> None:
    shipped = {p.stem for p in (Path(nlseg.__file__).parent / "configs").glob("*.yaml")}
    assert len(shipped) > 30 and shipped <= set(_listed(capsys, "recipes"))


def test_list_models_blocks_and_datasets(capsys) -> None:
    from nlseg.data import list_datasets

    assert _listed(capsys, "models") == nlseg.list_models()
    assert _listed(capsys, "blocks") == nlseg.list_blocks()
    datasets = _listed(capsys, "datasets")
    assert {"synthetic", "cityscapes", "ade20k", *list_datasets()} == set(datasets) and len(datasets) == len(set(datasets))


def test_an_unknown_list_target_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["list", "recipe"])
    assert info.value.code == 2 and "invalid choice: 'recipe'" in capsys.readouterr().err
