"""The compiled inference path (``eval.compile``): when ``auto`` compiles (numbers), the recipe key and the CLI
flag, the one-line fallbacks (no C++ compiler, a failing compile), and, slow: inductor with frozen weights equals
eager, and the persistent cache makes a second process's compile faster."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import nlseg.cli as cli
from nlseg.config import EvalConfig, InferenceOptions, load_config
from nlseg.engine.inference import prepare_for_inference
from nlseg.engine.inference import compiled as compiled_mod
from nlseg.engine.inference.compiled import CompileGate, inductor_cache_dir, worth_compiling
from nlseg.engine.inference.merge import input_shapes, predict_with_config
from nlseg.errors import ConfigError
from nlseg.models import create_model


def test_auto_compiles_when_the_rest_of_the_job_pays_for_the_compile_time():
    # 499 images left x 4.2 s x 10 % = 209.6 s saved > 1 shape x 120 s compile
    assert worth_compiling(499, 4.2, 1, saving=0.10, compile_seconds=120.0)
    # 200 images left: 84 s saved < 120 s; with a warm cache (30 s) it pays
    assert not worth_compiling(200, 4.2, 1, saving=0.10, compile_seconds=120.0)
    assert worth_compiling(200, 4.2, 1, saving=0.10, compile_seconds=30.0)
    # two image sizes compile twice: 209.6 s < 240 s
    assert not worth_compiling(499, 4.2, 2, saving=0.10, compile_seconds=120.0)
    # no expected saving (this CPU, measured): never
    assert not worth_compiling(10**6, 4.2, 1, saving=0.0, compile_seconds=1.0)


def test_the_job_counts_its_distinct_input_shapes():
    sizes = [(512, 1024), (512, 1024), (600, 800)]
    assert input_shapes(EvalConfig(mode="slide", crop_size=[512, 512], scales=[0.5, 1.0, 1.5]), None) == 1
    assert input_shapes(EvalConfig(scales=[1.0]), iter(sizes)) == 2
    assert input_shapes(EvalConfig(scales=[0.5, 1.0]), iter(sizes)) == 4
    assert input_shapes(EvalConfig(size=[256, 512], scales=[0.75, 1.0]), None) == 2
    assert input_shapes(EvalConfig(), None) is None  # whole images of unknown sizes


def test_the_recipe_key_takes_auto_on_off_and_the_old_booleans():
    assert load_config("demo").eval.compile == "auto"
    for value, want in (("auto", "auto"), ("on", "on"), ("off", "off"), ("true", "on"), ("false", "off")):
        assert load_config("demo", [f"eval.compile={value}"]).eval.compile == want
    with pytest.raises(ConfigError, match=r"eval.compile must be one of auto, on, off, got 'sometimes'"):
        load_config("demo", ["eval.compile=sometimes"])
    assert InferenceOptions(compile=True).compile == "on" and InferenceOptions(compile=False).compile == "off"
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        InferenceOptions(compile="always")


@pytest.mark.parametrize("argv", [
    ["eval", "demo", "--checkpoint", "c.pt"],
    ["predict", "demo", "--checkpoint", "c.pt", "--input", "in", "--output", "out"],
])
def test_compile_flag_sets_the_recipe_key(argv: list[str]):
    from nlseg.cli.common import compile_override

    parser = cli.build_parser()
    assert compile_override(parser.parse_args(argv)) == []
    args = parser.parse_args([*argv, "--set", "eval.compile=on", "--compile", "off"])
    assert compile_override(args) == ["eval.compile=on", "eval.compile=off"]  # the flag comes last and wins
    assert load_config("demo", compile_override(args)).eval.compile == "off"
    assert parser.parse_args(["bench", "models", "--compile", "auto"]).compile == "auto"
    assert parser.parse_args(["bench", "models"]).compile == "off"


def test_bench_refuses_compile_for_a_training_step(capsys):
    assert cli.main(["bench", "models", "--train", "--compile", "on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nlseg bench: error: --compile applies to inference; a training step compiles with "
                   "`nlseg bench train`"]


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval().requires_grad_(False)


def test_auto_stays_eager_when_the_job_is_short_and_says_why_in_one_line():
    lines = []
    gate = CompileGate(_tiny(), "auto", log=lines.append)
    x = torch.randn(1, 3, 16, 16)
    with gate.image():
        gate(x)
    assert lines == [] and gate.path == "eager (compile auto: the job's size is unknown)"  # no job: no line
    lines.clear()
    gate = CompileGate(_tiny(), "auto", log=lines.append)
    gate.plan(images=3, shapes=1)
    for _ in range(3):
        with gate.image():
            gate(x)
    assert gate.compiled is None and len(lines) == 1
    assert lines[0].startswith("inference path: eager (compile auto: 2 image(s) left x ") and "~" in lines[0]


def test_no_cpp_compiler_runs_eagerly_after_one_warning(capsys):
    import torch._inductor.config as inductor_config

    # inductor's own patch: monkeypatch's undo would delete the entry from its config (hidden from then on)
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        _no_compiler_runs_eagerly(capsys)
    assert inductor_config.cpp.cxx[1] != "/nonexistent/c++"


def _no_compiler_runs_eagerly(capsys) -> None:
    assert compiled_mod.missing_compiler("cpu") == ("no C++ compiler (inductor looked for /nonexistent/c++ on the "
                                                    "PATH; set CXX to one)")
    model, lines = _tiny(), []
    gate = CompileGate(model, "on", log=lines.append)
    x = torch.randn(1, 3, 16, 16)
    for _ in range(2):
        torch.testing.assert_close(gate(x), model(x), rtol=0, atol=0)
    assert gate.compiled is None
    assert capsys.readouterr().err.splitlines() == [
        "nlseg: warning: compiled inference is not possible here: no C++ compiler (inductor looked for "
        "/nonexistent/c++ on the PATH; set CXX to one); running eagerly"]
    assert lines == [] and gate.path.startswith("eager (no C++ compiler")  # the warning was the one line


def test_a_compile_that_raises_runs_eagerly_after_one_warning(capsys):
    def broken(gm, inputs):
        raise RuntimeError("backend broke")

    torch._dynamo.reset()
    model, lines = _tiny(), []
    gate = CompileGate(model, "on", backend=broken, log=lines.append)
    x = torch.randn(1, 3, 16, 16)
    for _ in range(2):
        torch.testing.assert_close(gate(x), model(x), rtol=0, atol=0)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nlseg: warning: compiling the model failed (")
    assert err[0].endswith("running eagerly")
    assert lines == [] and gate.path.startswith("eager (compiling failed: ")  # the warning was the one line


def test_the_cache_folder_follows_xdg_unless_torchinductor_cache_dir_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inductor_cache_dir() == tmp_path / "xdg" / "nlseg" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert inductor_cache_dir() == tmp_path / "mine"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what inductor writes there itself
    assert inductor_cache_dir() == tmp_path / "xdg" / "nlseg" / "inductor"


def test_nlseg_eval_says_in_one_line_which_path_ran_and_why(tmp_path, capsys):
    """The default, auto, on a tiny Cityscapes split of two images of one size: one shape, no saving on a CPU."""
    from test_evaluate import K, TINY_MODEL, random_frames, write_checkpoint, write_cityscapes, write_recipe

    write_cityscapes(tmp_path / "cs", "val", random_frames(0, ["frankfurt_000000_000294", "munster_000002_000019"]))
    recipe = write_recipe(tmp_path / "tiny.yaml", tmp_path / "cs")
    torch.manual_seed(0)
    checkpoint = write_checkpoint(tmp_path / "tiny.pt", create_model("fcn_r18", num_classes=K, **TINY_MODEL),
                                  "fcn_r18", recipe)
    assert cli.main(["eval", str(recipe), "--checkpoint", str(checkpoint)]) == 0
    paths = [line for line in capsys.readouterr().err.splitlines() if line.startswith("inference path:")]
    assert len(paths) == 1 and paths[0].startswith("inference path: eager (compile auto: 1 image(s) left x ")
    assert re.search(r" s x 0% expected saving vs 1 shape\(s\) x ~\d+ s compile\)$", paths[0]), paths[0]
    assert cli.main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--compile", "off"]) == 0
    assert "inference path:" not in capsys.readouterr().err  # off was asked for: nothing to explain


@pytest.mark.slow
def test_frozen_inductor_equals_eager_on_test_images(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored afterwards, whoever set it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # not the user's cache
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("denoised_nl_r18", num_classes=19).eval()
    eager = prepare_for_inference(model, InferenceOptions(compile="off"))
    frozen = prepare_for_inference(model, InferenceOptions(compile="on"))
    lines = []
    frozen.gate.log = lines.append
    images = torch.randn(2, 1, 3, 96, 128)  # two test images of one size: one compile
    with torch.no_grad():
        for image in images:
            want, got = eager(image)["out"], frozen(image)["out"]
            assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
            assert torch.equal(got.argmax(1), want.argmax(1))
    assert frozen.gate.compiled is not None
    assert lines == ["inference path: compiled (inductor, frozen weights; compile on)"]
    # sliding windows: every window is one shape, so one more compile serves them all
    slide = EvalConfig(mode="slide", crop_size=[64, 64], stride=[48, 48])
    for image in images:
        want = predict_with_config(eager, image, slide, num_classes=19)
        got = predict_with_config(frozen, image, slide, num_classes=19)
        assert (got - want).abs().max().item() <= 1e-4 and torch.equal(got.argmax(1), want.argmax(1))


CACHED_COMPILE = textwrap.dedent("""
    import json, time, torch
    from torch import nn
    from nlseg.engine.inference.compiled import CompileGate
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 4, 1)).eval().requires_grad_(False)
    run = CompileGate(model, "on", log=lambda line: None)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        start = time.perf_counter()
        run(x)
        print(json.dumps({"seconds": time.perf_counter() - start}))
""")


@pytest.mark.slow
def test_a_second_process_compiles_from_the_persistent_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR")}
    env["XDG_CACHE_HOME"] = str(tmp_path)

    def compile_seconds() -> float:
        done = subprocess.run([sys.executable, "-c", CACHED_COMPILE], env=env, capture_output=True, text=True,
                              check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]

    cold = compile_seconds()
    graphs = tmp_path / "nlseg" / "inductor" / "fxgraph"
    cached = [p for p in graphs.rglob("*") if p.is_file()]
    warm = compile_seconds()
    print(f"compile + first pass: cold cache {cold:.2f} s, warm cache {warm:.2f} s; {len(cached)} cached graph files")
    assert len(cached) >= 1
    assert warm < 0.8 * cold


def test_a_memory_probe_runs_eagerly_and_decides_nothing():
    lines = []
    gate = CompileGate(_tiny(), "on", log=lines.append)
    gate.plan(images=100, shapes=1)
    with gate.eager(), gate.image():
        gate(torch.randn(1, 3, 16, 16))
    assert gate.path is None and gate.compiled is None and lines == []


@pytest.mark.slow
def test_nlseg_predict_without_a_cpp_compiler_warns_once_and_predicts_eagerly(tmp_path):
    """CXX pointing at nothing (inductor reads it when it is imported): ``--compile on`` prints one warning line,
    and the predictions are written as without compiling."""
    from PIL import Image
    from test_evaluate import K, TINY_MODEL, random_frames, write_checkpoint, write_cityscapes, write_recipe

    write_cityscapes(tmp_path / "cs", "val", random_frames(0, ["frankfurt_000000_000294"]))
    recipe = write_recipe(tmp_path / "tiny.yaml", tmp_path / "cs")
    torch.manual_seed(0)
    checkpoint = write_checkpoint(tmp_path / "tiny.pt", create_model("fcn_r18", num_classes=K, **TINY_MODEL),
                                  "fcn_r18", recipe)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    env = dict(os.environ, CXX="/nonexistent/c++", PATH="/nonexistent")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    outputs = {}
    for compile_mode, extra in (("on", env), ("off", os.environ)):
        out = tmp_path / f"out_{compile_mode}"
        done = subprocess.run([sys.executable, "-m", "nlseg", "predict", str(recipe), "--checkpoint", str(checkpoint),
                               "--input", str(photos), "--output", str(out), "--compile", compile_mode],
                              env=dict(extra), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs[compile_mode] = (out, done.stderr)
    warnings = [line for line in outputs["on"][1].splitlines() if "warning" in line]
    assert warnings == ["nlseg: warning: compiled inference is not possible here: no C++ compiler (inductor looked for "
                        "/nonexistent/c++ on the PATH; set CXX to one); running eagerly"]
    for name in ("0.png", "1.png"):
        on, off = (np.asarray(Image.open(outputs[mode][0] / name)) for mode in ("on", "off"))
        assert np.array_equal(on, off)
