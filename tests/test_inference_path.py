"""The inference path (``prepare_for_inference``) equals the eager float32 model, for every model family.

Tolerances, as the maximum absolute difference of the main logits over the largest absolute logit of the
eager float32 forward:

* no auxiliary heads: bit-identical (the same operations on the same numbers);
* folded batch norm + channels-last + no auxiliary heads: 1e-5 (float32 rounding of a reordered sum;
  measured at most 2e-6 on these models);
* ``torch.compile`` with the eager backend: bit-identical to the uncompiled prepared model;
  with inductor (one small model): 1e-5;
* bf16 autocast: 5e-2 (bf16 keeps 8 bits of mantissa; measured up to 3.3e-2); fp16 autocast: 1e-2
  (measured up to 4.2e-3). Both also predict the same class at >= 95 % of the pixels.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import tiered

from nlseg.cli import main
from nlseg.config import load_config
from nlseg.data import SyntheticContext
from nlseg.engine.checkpoint import save_checkpoint
from nlseg.engine.inference import InferenceModel, InferenceOptions, Segmenter, prepare_for_inference
from nlseg.errors import ConfigError
from nlseg.models import create_model, list_models, model_options
from nlseg.models.fold import fold_batchnorm

FAMILIES = [
    "fcn_r18",
    "ann_r50",  # AFNB + APNB
    "ann_common_fusion_nb_r50",
    "ann_fnb_r50",
    "denoised_nl_r18",
    "dnl_baseline_r18",
    "nl_r50",
    "ocnet_r50",
    "ccnet_r50",
    "danet_r50",
    "dranet_r50",
    "ppm_r50",
    "aspp_r50",
    "nl_head_r50",  # the blocks' original networks: heads on layer4 at 1/8
    "danet_head_r50",
    "ppm_head_r50",
    "aspp_head_r50",
]
NUM_CLASSES = 5
SIZE = (33, 49)
SMALL = {"backbone_width": 8, "head_channels": 16}
EXACT = 1e-5
BF16, FP16 = 5e-2, 1e-2

LEFT_UNFOLDED: dict[str, dict[str, str]] = {}
"""Norms fold_batchnorm deliberately leaves in a registered model: model -> {module name: reason}. None today:
every BatchNorm2d of every registered model directly follows a convolution (in a Sequential, or a (conv, bn)
attribute pair of the backbone)."""


def build(name: str, seed: int = 0) -> nn.Module:
    """A small ``name`` in eval mode: no zero-initialised block (every block reaches the output), every norm
    given random running statistics and affine parameters, so folding has something to fold."""
    torch.manual_seed(seed)
    accepted = model_options(name)
    options = SMALL | {key: 8 for key in ("key_channels", "value_channels") if key in accepted}
    model = create_model(name, num_classes=NUM_CLASSES, **options)
    randomise(model)
    return model.eval()


def randomise(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # a zero-initialised gamma or Wo: the block would be the identity
                p.normal_(0.0, 0.5)
        for norm in model.modules():
            if isinstance(norm, _BatchNorm):
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2.0)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def same_class_share(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.argmax(1) == want.argmax(1)).float().mean().item()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_levers_equal_the_eager_model(name: str, image: torch.Tensor):
    model = build(name)
    with torch.no_grad():
        full = model(image, with_aux=True)
        plain = model(image)
    assert len(full["aux"]) == len(model.aux_heads) >= 1 and plain["aux"] == []
    assert torch.equal(plain["out"], full["out"])  # no auxiliary heads: bit-identical
    prepared = prepare_for_inference(model, InferenceOptions(aux=False, fold_bn=True, channels_last=True))
    assert not any(isinstance(m, _BatchNorm) for m in prepared.modules())
    with torch.no_grad():
        out = prepared(image)
    assert out["aux"] == [] and out["out"].dtype == torch.float32
    assert relative_error(out["out"], full["out"]) <= EXACT
    assert any(isinstance(m, _BatchNorm) for m in model.modules()), "the model passed in is not changed"
    with torch.no_grad():
        assert torch.equal(model(image)["out"], plain["out"])

    heads_too = prepare_for_inference(model, channels_last_heads=True)
    with torch.no_grad():
        assert relative_error(heads_too(image)["out"], full["out"]) <= EXACT

    with_aux = prepare_for_inference(model, InferenceOptions(aux=True))
    with torch.no_grad():
        got = with_aux(image)
    assert len(got["aux"]) == len(full["aux"])
    for a, b in zip(got["aux"], full["aux"], strict=True):
        assert relative_error(a, b) <= EXACT


@pytest.mark.parametrize(
    "name, options, reads",
    [
        ("denoised_nl_r18", {}, ["layer3"]),  # Global Rectifying's class map
        ("denoised_nl_r18", {"rectify": False}, []),
        ("dnl_baseline_r18", {}, []),
        ("fcn_r18", {}, []),
        ("ann_r50", {"key_channels": 8, "value_channels": 8}, []),
    ],
)
def test_without_aux_only_the_heads_the_decoder_reads_run(name: str, options: dict, reads: list[str]):
    model = create_model(name, num_classes=NUM_CLASSES, **SMALL, **options)
    assert list(model.decoder.aux_inputs) == reads
    ran: list[str] = []
    for stage, head in model.aux_heads.items():
        head.register_forward_hook(lambda *_, stage=stage: ran.append(stage))
    x = torch.randn(2, 3, *SIZE)
    model.train()
    assert len(model(x)["aux"]) == len(model.aux_heads) and ran == list(model.aux_heads)  # training: every head
    model.eval()
    for with_aux, expected in ((None, reads), (False, reads), (True, list(model.aux_heads))):
        ran.clear()
        with torch.no_grad():
            result = model(x, with_aux=with_aux)
        assert ran == expected and len(result["aux"]) == (len(expected) if with_aux else 0)


@pytest.mark.parametrize("name", FAMILIES)
def test_autocast_is_within_the_stated_tolerance(name: str, image: torch.Tensor):
    model = build(name)
    with torch.no_grad():
        want = model(image)["out"]
    for amp, tolerance in (("bf16", BF16), ("fp16", FP16)):
        prepared = prepare_for_inference(model, InferenceOptions(amp=amp))
        with torch.no_grad():
            got = prepared(image)["out"]
        assert got.dtype == torch.float32
        assert relative_error(got, want) <= tolerance, amp
        assert same_class_share(got, want) >= 0.95, amp


def _channels_last(t: torch.Tensor) -> bool:
    """Strictly channels-last: laid out NHWC and not also plain contiguous (a 1x1 map or kernel is both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("heads", [False, True])
def test_channels_last_is_the_backbones_and_the_heads_only_when_asked(heads: bool, image: torch.Tensor):
    model = build("danet_head_r50")  # CAM, PAM and 3x3 convolutions in the decoder
    prepared = prepare_for_inference(model, channels_last_heads=heads)
    layouts = {part: {_channels_last(conv.weight) for conv in getattr(prepared.model, part).modules()
                      if isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1)}
               for part in ("backbone", "decoder", "aux_heads")}
    assert layouts == {"backbone": {True}, "decoder": {heads}, "aux_heads": {heads}}
    given = []
    hook = prepared.model.decoder.register_forward_pre_hook(lambda module, args: given.append(args[0]))
    with torch.no_grad():
        prepared(image)
    hook.remove()
    (features,) = given
    assert set(features) == {"layer1", "layer2", "layer3", "layer4"}
    if heads:
        assert all(_channels_last(feature) for feature in features.values())
    else:  # the decoder read layer4, made contiguous on reading; the stages nothing read were never copied
        stored = features._features
        assert not _channels_last(stored["layer4"]) and stored["layer4"].is_contiguous()
        assert all(_channels_last(stored[stage]) for stage in ("layer1", "layer2", "layer3"))
        assert all(not _channels_last(feature) for feature in features.values())  # what a reader gets


@pytest.mark.parametrize("name", tiered(FAMILIES, fast=["ann_r50", "denoised_nl_r18"]))
def test_compiled_model_equals_the_uncompiled_one(name: str, image: torch.Tensor):
    """Dynamo traces every family (the eager backend runs the traced graph as is: bit-identical to the unfused
    eager model; traced, the fused stages run their blocks plainly, which inductor fuses by itself)."""
    torch._dynamo.reset()
    model = build(name)
    plain = prepare_for_inference(model, InferenceOptions(fuse=False))
    compiled = prepare_for_inference(model, InferenceOptions(compile=True), compile_backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(image)["out"], plain(image)["out"], rtol=0, atol=0)


@pytest.mark.slow
def test_inductor_compiles_a_small_model_within_the_tolerance(image: torch.Tensor):
    torch._dynamo.reset()
    model = build("fcn_r18")
    with torch.no_grad():
        want = model(image)["out"]
        got = prepare_for_inference(model, InferenceOptions(compile=True))(image)["out"]
    assert relative_error(got, want) <= EXACT


@pytest.mark.slow
def test_fold_batchnorm_folds_every_norm_of_every_registered_model():
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, num_classes=3).eval()
        assert any(isinstance(m, _BatchNorm) for m in model.modules())
        fold_batchnorm(model)
        left = {key for key, m in model.named_modules() if isinstance(m, _BatchNorm)}
        assert left == set(LEFT_UNFOLDED.get(name, {})), (name, sorted(left))


def test_fold_batchnorm_is_exact_in_float64_and_refuses_training_mode():
    model = build("danet_r50").double()
    x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)["out"]
        folded = fold_batchnorm(copy.deepcopy(model))
        torch.testing.assert_close(folded(x)["out"], want, rtol=1e-12, atol=1e-12)
    stem = folded.backbone  # the deep stem: conv1 is a Sequential whose last convolution bn1 follows
    assert isinstance(stem.bn1, nn.Identity) and stem.conv1[-1].bias is not None and model.backbone.conv1[-1].bias is None
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(build("fcn_r18").train())
    half = build("fcn_r18")
    half.decoder.train()
    with pytest.raises(ValueError, match="decoder is in training mode"):
        fold_batchnorm(half)


def test_folding_preserves_the_outputs_of_loaded_weights(image: torch.Tensor):
    trained = build("ann_r50", seed=0)
    restored = build("ann_r50", seed=1)
    restored.load_state_dict(trained.state_dict())
    with torch.no_grad():
        want = trained(image)["out"]
        got = prepare_for_inference(restored, inplace=True)(image)["out"]
    assert relative_error(got, want) <= EXACT
    assert not any(isinstance(m, _BatchNorm) for m in restored.modules()), "inplace=True folds the model itself"


def test_prepared_model_is_for_inference_only(image: torch.Tensor):
    model = build("fcn_r18").train()
    prepared = prepare_for_inference(model)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
    with pytest.raises(RuntimeError, match="inference only"):
        prepared.train()
    prepared.eval()  # evaluate() puts a model in eval mode and back: allowed
    with pytest.raises(TypeError, match="already prepared"):
        prepare_for_inference(prepared)
    with pytest.raises(ValueError, match="amp"):
        InferenceOptions(amp="fp8")
    assert (prepared.num_classes, prepared.align_corners) == (NUM_CLASSES, True)


def test_the_recipes_eval_section_is_the_inference_options():
    cfg = load_config("demo", ["eval.amp=bf16", "eval.fold_bn=false", "eval.aux=true", "eval.compile=true",
                               "eval.channels_last=false"])
    assert isinstance(cfg.eval, InferenceOptions)  # one object: prepare_for_inference reads the section itself
    levers = {f.name: getattr(cfg.eval, f.name) for f in dataclasses.fields(InferenceOptions)}
    assert levers == dict(aux=True, fold_bn=False, channels_last=False, fuse=True, amp="bf16", compile="on")
    defaults = load_config("demo").eval
    assert {f.name: getattr(defaults, f.name) for f in dataclasses.fields(InferenceOptions)} == vars(InferenceOptions())
    prepared = prepare_for_inference(build("fcn_r18"), defaults)
    assert prepared.options is defaults
    with pytest.raises(ConfigError, match="unknown config key 'eval.channels_last_heads'"):  # a benchmark's knob
        load_config("demo", ["eval.channels_last_heads=true"])
    assert load_config("demo", ["eval.amp=off"]).eval.amp == "off"
    with pytest.raises(ConfigError, match="eval.amp must be one of off, bf16, fp16, got 'fp32'"):
        load_config("demo", ["eval.amp=fp32"])


# --- user journeys: a recipe, a checkpoint, the command line -----------------------------------------------

TINY = {"backbone_width": 8, "head_channels": 16, "key_channels": 8}


def write_recipe(path: Path, **train: object) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"name": "denoised_nl_r18", "options": TINY},
        "data": {"dataset": "synthetic", "crop_size": 48, "scale_range": [1.0, 1.0], "num_workers": 0,
                 "options": {"length": 4, "size": [40, 56]}},
        "loss": {"main": "ce", "aux_weights": [1.0, 1.0]},
        "train": {"iters": 2, "batch_size": 2, "lr": 0.01, "device": "cpu", "log_interval": 1, **train},
    }))
    return path


@pytest.fixture
def journey(tmp_path: Path) -> tuple[Path, Path]:
    """A Denoised NL recipe on the synthetic data (GR reads the layer3 head) and a checkpoint whose norms have
    random statistics."""
    recipe = write_recipe(tmp_path / "tiny.yaml")
    torch.manual_seed(0)
    model = create_model("denoised_nl_r18", num_classes=SyntheticContext.num_classes, **TINY)
    randomise(model)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "denoised_nl_r18",
                     "num_classes": SyntheticContext.num_classes, "class_names": list(SyntheticContext.classes),
                     "config": load_config(recipe).to_dict()}, checkpoint)
    return recipe, checkpoint


EAGER = ["eval.fold_bn=false", "eval.channels_last=false"]
LEVERS = {"eager": EAGER, "default": [], "bf16": ["eval.amp=bf16", "eval.fold_bn=true"]}


def test_eval_cli_with_the_levers_matches_the_eager_model(journey: tuple[Path, Path], tmp_path: Path):
    recipe, checkpoint = journey
    results = {}
    for name, overrides in LEVERS.items():
        out = tmp_path / f"{name}.json"
        args = ["eval", str(recipe), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
        assert main([*args, *(["--set", *overrides] if overrides else [])]) == 0
        results[name] = json.loads(out.read_text())
    assert results["bf16"]["eval"]["amp"] == "bf16" and results["eager"]["eval"]["fold_bn"] is False
    matrices = {name: np.array(r["confusion_matrix"]) for name, r in results.items()}
    pixels = matrices["eager"].sum()
    assert pixels > 0 and all(m.sum() == pixels for m in matrices.values())
    # A pixel whose prediction changes moves one count off its cell and onto another.
    assert np.abs(matrices["default"] - matrices["eager"]).sum() / 2 <= 1e-3 * pixels
    assert np.abs(matrices["bf16"] - matrices["eager"]).sum() / 2 <= 5e-2 * pixels
    assert results["default"]["mIoU"] == pytest.approx(results["eager"]["mIoU"], abs=0.5)
    assert results["bf16"]["mIoU"] == pytest.approx(results["eager"]["mIoU"], abs=5.0)


def test_predict_cli_with_the_levers_matches_the_eager_model(journey: tuple[Path, Path], tmp_path: Path):
    recipe, checkpoint = journey
    rng = np.random.default_rng(0)
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)).save(inputs / f"p{k}.png")
    preds = {}
    for name, overrides in LEVERS.items():
        out = tmp_path / f"pred_{name}"
        args = ["predict", str(recipe), "--checkpoint", str(checkpoint), "--input", str(inputs), "--output",
                str(out), "--device", "cpu"]
        assert main([*args, *(["--set", *overrides] if overrides else [])]) == 0
        preds[name] = np.stack([np.array(Image.open(out / f"p{k}.png")) for k in range(2)])
    assert (preds["default"] == preds["eager"]).mean() >= 0.999
    assert (preds["bf16"] == preds["eager"]).mean() >= 0.95
    # and the Segmenter API takes the levers too
    segmenter = Segmenter.from_checkpoint(checkpoint, options=InferenceOptions(amp="bf16"))
    assert isinstance(segmenter.model, InferenceModel) and segmenter.model.options.amp == "bf16"
    photo = np.array(Image.open(inputs / "p0.png"))
    assert (segmenter.predict(photo).numpy() == preds["eager"][0]).mean() >= 0.95


def test_validation_in_training_does_not_touch_the_trained_model(tmp_path: Path):
    """Validation folds a copy: runs that validate with and without the levers train the same weights."""
    from nlseg.engine.trainer import train

    weights = {}
    for name, overrides in (("eager", EAGER), ("levers", ["eval.amp=bf16"])):
        cfg = load_config(write_recipe(tmp_path / f"{name}.yaml", eval_interval=1), overrides)
        train(cfg, tmp_path / name)
        state = torch.load(tmp_path / name / "last.pt", weights_only=False)["model"]
        assert any(key.endswith("running_var") for key in state), "the trained model keeps its norms"
        weights[name] = state
        validations = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert sum(r["kind"] == "val" for r in validations) == 2
    for key, value in weights["eager"].items():
        assert torch.equal(weights["levers"][key], value), key
