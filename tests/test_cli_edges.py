"""The command line at its edges: a reader that closes the pipe, non-finite numbers, ``~`` and ``$HOME`` in
paths, files refused by safe loading."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("what", ["models", "recipes"])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(what):
    # `nlseg list models | head`: the reader is gone before nlseg writes (deterministic, unlike a real head)
    proc = subprocess.Popen([sys.executable, "-m", "nlseg", "list", what], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141  # as a Unix tool killed by SIGPIPE
    assert err == ""


def _float_keys(cls=None, prefix: str = "") -> dict[str, bool]:
    """Every float field of the recipe, dotted, -> whether it is a list of floats."""
    import dataclasses
    import typing

    from nlseg.config import Config

    def floats(hint) -> tuple[bool, bool]:  # (holds a float, is a list)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Annotated:
            return floats(args[0])
        if origin is list:
            return floats(args[0])[0], True
        if origin in (typing.Union, __import__("types").UnionType):
            found = [floats(a) for a in args if a is not type(None)]
            return any(f for f, _ in found), any(lst for _, lst in found)
        return hint is float, False

    keys: dict[str, bool] = {}
    for name, hint in typing.get_type_hints(cls or Config, include_extras=True).items():
        if dataclasses.is_dataclass(hint):
            keys.update(_float_keys(hint, f"{prefix}{name}."))
        elif floats(hint)[0]:
            keys[f"{prefix}{name}"] = floats(hint)[1]
    return keys


def test_every_float_field_refuses_non_finite_values_at_load(tmp_path, capsys):
    from nlseg.cli import main as cli_main

    keys = _float_keys()
    assert {"train.lr", "train.momentum", "loss.ohem_threshold", "data.scale_range", "eval.scales"} <= set(keys)
    for key, is_list in keys.items():
        for text in ("inf", "1e999", "-.inf", ".nan"):
            value = f"[{text}, {text}]" if is_list else text
            assert cli_main(["train", "demo", "--work-dir", str(tmp_path / "w"), "--set", f"{key}={value}"]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err
            assert f"--set: {key}" in err and "must be a finite number" in err, err
    assert not (tmp_path / "w" / "config.yaml").exists()
    # in a recipe file too, with the allowed range named
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: .inf\n")
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "w")]) == 2
    expected = f"nlseg train: error: {recipe}: train.lr must be a finite number > 0, got inf"
    assert capsys.readouterr().err.strip() == expected


def test_home_in_every_path_option_is_expanded(tmp_path, monkeypatch, capsys):
    import numpy as np
    import yaml
    from PIL import Image
    from test_trainer import write_recipe

    from nlseg.cli import main as cli_main
    from nlseg.config import load_config

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    write_recipe(home / "r.yaml", iters=1, checkpoint_interval=1)
    # work dir (also in --flag=~/... form, which no shell expands), recipe file, model.init_from
    assert cli_main(["train", "$HOME/r.yaml", "--work-dir=~/w"]) == 0
    assert (home / "w" / "last.pt").is_file()
    assert cli_main(["train", "~/r.yaml", "--work-dir", "$HOME/w2", "--set", "model.init_from=~/w/last.pt"]) == 0
    saved = yaml.safe_load((home / "w2" / "config.yaml").read_text())
    assert saved["model"]["init_from"] == str(home / "w" / "last.pt")
    # checkpoint, input and output of predict; --out and --export-dir of eval
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(home / "photo.png")
    assert cli_main(["predict", "~/r.yaml", "--checkpoint", "~/w/last.pt", "--input", "$HOME/photo.png",
                     "--output", "~/pred", "--device", "cpu"]) == 0
    assert (home / "pred" / "photo.png").is_file()
    assert cli_main(["eval", "~/r.yaml", "--checkpoint", "${HOME}/w/last.pt", "--out", "~/m.json",
                     "--export-dir", "~/exp", "--device", "cpu"]) == 0
    assert (home / "m.json").is_file() and any((home / "exp").iterdir())
    assert not any(cwd.iterdir())  # no folder named "~" or "$HOME" here
    # every path field of a recipe
    cfg = load_config(home / "r.yaml", ["data.root=$HOME/data", "model.pretrained_backbone=~/weights.pt"])
    assert cfg.data.root == str(home / "data") and cfg.model.pretrained_backbone == str(home / "weights.pt")
    assert "Traceback" not in capsys.readouterr().err


class _RunsCode:
    """What a malicious pickle holds: loading it with weights_only=False would call print."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("payload", ["namespace", "code", "legacy", "raw pickle"])
def test_a_file_refused_by_safe_loading_gets_only_nlsegs_line_on_every_load_path(tmp_path, capsys, payload):
    import argparse
    import pickle

    import torch
    from test_trainer import write_recipe

    from nlseg.cli import main as cli_main

    weights = {"conv1.weight": torch.zeros(2)}
    extra = _RunsCode() if payload in ("code", "raw pickle") else argparse.Namespace(lr=0.1)
    bad = tmp_path / "bad.pth"
    if payload == "raw pickle":
        bad.write_bytes(pickle.dumps({"model": weights, "state_dict": weights, "extra": extra}, protocol=4))
    else:
        torch.save({"model": weights, "state_dict": weights, "extra": extra}, bad,
                   _use_new_zipfile_serialization=payload != "legacy")
    recipe = write_recipe(tmp_path / "r.yaml", iters=1)
    image = tmp_path / "x.png"
    image.write_bytes(b"")  # never read: the checkpoint is refused first
    paths = {
        "checkpoint": ["predict", str(recipe), "--checkpoint", str(bad), "--input", str(image), "--output",
                       str(tmp_path / "o")],
        "init_from": ["train", str(recipe), "--work-dir", str(tmp_path / "w1"), "--set", f"model.init_from={bad}"],
        "weights file": ["train", str(recipe), "--work-dir", str(tmp_path / "w2"), "--set",
                         f"model.pretrained_backbone={bad}"],
        "released file": ["convert", "ann-backbone", str(bad), "--out", str(tmp_path / "c.pt")],
    }
    for what, argv in paths.items():
        assert cli_main(argv) == 2, what
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (what, captured.err)
        assert str(bad) in lines[0] and "no code is executed" in lines[0], (what, lines[0])
        if what in ("weights file", "released file") and payload != "raw pickle":  # what the file is
            assert f"{what} {bad}" in lines[0]
        for torch_words in ("weights_only", "trust", "Weights only load failed", "pickle protocol", "safe_globals"):
            assert torch_words not in captured.err, (what, captured.err)
        assert "code ran" not in captured.out
