"""ONNX export (``nlseg export``, :mod:`nlseg.engine.export`): onnxruntime equals PyTorch eager for every model
family, at the traced size and at other sizes (odd ones, and feature maps smaller than the pooling grids), also
for the families that pool adaptively to bins (APNB/AFNB, PPM, DRANet); max pyramid pooling is the one
fixed-size case.

Tolerance: max |onnxruntime - eager| <= 1e-3 x the standard deviation of the eager logits (float32; measured
below 1e-5 x).

To keep the file fast, the families that share a backbone are exported together: one :class:`Segmentor` with
their shared backbone and auxiliary heads and a decoder that runs every family's decoder side by side
(:class:`_Decoders`). Each family's slice of the exported output is compared with that family's own model,
built by ``create_model`` and run eagerly with the same backbone and heads. Weights are the golden tests'
non-identity fill (no block starts as the identity), backbones ResNet-18 at width 8.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import tiered
from test_golden import fill_weights
from torch import Tensor, nn

import nlseg
from nlseg.cli import main
from nlseg.models.base import Segmentor

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from nlseg.engine.export import ImageToLogits, export_onnx, static_size_reason  # noqa: E402

TOLERANCE = 1e-3
K = 3
SIZE, OTHER = (33, 49), (41, 30)
MORE = [(75, 91), (19, 23)]  # feature maps 10x12 (no side a multiple of 3, 6 or 8) and 3x3 (smaller than 6x6, 8x8)
SMALL = {"backbone": "resnet18", "backbone_width": 8, "head_channels": 16}
PIPELINE = {**SMALL, "multi_grid": (1, 2)}  # the Denoised NL pipeline's layer4 multi-grid, for 2 blocks

GROUPS = {
    # Denoised NL pipeline (Song et al. Fig. 3) with each compared block; sizes dynamic
    "pipeline": (PIPELINE, ["denoised_nl_r50", "dnl_baseline_r50", "nl_r50", "ocnet_r50", "ccnet_r50",
                            "danet_r50", "aspp_r50"]),
    "pipeline_pooled": (PIPELINE, ["ppm_r50", "dranet_r50"]),  # PPM, DRANet CPAM: 2x2 ... 6x6 bins
    "ann": (SMALL, ["ann_nb_r50", "ann_fnb_r50", "ann_common_fusion_nb_r50", "ann_fnb_nb_r50"]),
    "ann_pooled": (SMALL, ["ann_r50", "ann_apnb_r50", "ann_afnb_r50", "ann_common_fusion_r50"]),  # pyramid sampling
    "fcn": ({"backbone_width": 8, "head_channels": 16}, ["fcn_r18"]),
    # the blocks' original networks (nlseg.models.heads); PSPNet's pooled bins also at sizes whose bins differ
    "heads": (SMALL, ["nl_head_r50", "danet_head_r50", "aspp_head_r50"]),
    "heads_pooled": (SMALL, ["ppm_head_r50"]),
}


class _Decoders(nn.Module):
    """Every family's decoder on the same features; their logits side by side on the class axis."""

    def __init__(self, decoders: list[nn.Module]) -> None:
        super().__init__()
        self.decoders = nn.ModuleList(decoders)

    def forward(self, features: dict[str, Tensor], aux: dict[str, Tensor]) -> Tensor:
        return torch.cat([decoder(features, aux) for decoder in self.decoders], dim=1)  # (B, F·K, h, w)


def _family_models(options: dict, names: list[str]) -> tuple[Segmentor, list[Segmentor]]:
    """The families' models sharing the first one's backbone and auxiliary heads, and their joint model."""
    models = []
    for name in names:
        model = nlseg.create_model(name, num_classes=K, pretrained_backbone=None, **options)
        fill_weights(model)
        models.append(model.eval())
    for model in models[1:]:
        model.backbone, model.aux_heads = models[0].backbone, models[0].aux_heads
    joint = Segmentor(models[0].backbone, _Decoders([m.decoder for m in models]), models[0].aux_heads,
                      num_classes=K * len(models), align_corners=models[0].align_corners)
    return joint.eval(), models


def _run(path, image: Tensor) -> Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"image": image.numpy()})[0])


def _check(path, names: list[str], models: list[Segmentor], shapes: list[tuple[int, int, int]]) -> None:
    """onnxruntime's output for each (B, H, W) equals every family's own model run eagerly (within TOLERANCE)."""
    generator = torch.Generator().manual_seed(1)
    for shape in shapes:
        image = torch.rand(shape[0], 3, *shape[1:], generator=generator)
        got = _run(path, image)  # (B, F·K, H, W)
        for f, (name, model) in enumerate(zip(names, models, strict=True)):
            with torch.no_grad():
                expected = ImageToLogits(model)(image)  # the family's own model, eager, fused ops
            scale = expected.std().item()
            assert scale > 1e-3, name  # a real map, not a constant
            diff = (got[:, f * K : (f + 1) * K] - expected).abs().max().item()
            print(f"{name} {shape}: max |onnxruntime - eager| = {diff:.1e} = {diff / scale:.1e} x std {scale:.2f}")
            assert diff <= TOLERANCE * scale, f"{name} at {shape}: max |onnxruntime - eager| = {diff:.2e}"


@pytest.mark.parametrize("group", tiered(GROUPS, fast=["fcn", "heads_pooled"]))
def test_onnxruntime_equals_eager_for_every_family(group: str, tmp_path):
    options, names = GROUPS[group]
    joint, models = _family_models(options, names)
    assert static_size_reason(joint) is None
    result = export_onnx(joint, tmp_path / f"{group}.onnx", example_size=SIZE)
    assert result.dynamic_size
    session = ort.InferenceSession(str(result.path))
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[0].shape == ["batch", K * len(names), "height", "width"]
    pooled = group.endswith("pooled")  # pooling to bins: sizes whose bins differ from the example's
    _check(result.path, names, models, [(1, *SIZE), (2, *OTHER)] + ([(1, *s) for s in MORE] if pooled else []))


@pytest.mark.slow
def test_max_pyramid_pooling_is_exported_at_the_example_size_only(tmp_path):
    names = ["ann_r50"]
    joint, models = _family_models(SMALL, names)
    for module in joint.modules():
        if hasattr(module, "pool_mode"):  # APNB, AFNB: ANN Table 7's max pooling
            module.pool_mode = "max"
            module.pool_sizes = (1, 2, 3)  # few bins: the exporter's optimiser is slow on one slice per bin
    reason = static_size_reason(joint)
    assert reason is not None and "max-pools" in reason and "1/2/3" in reason
    result = export_onnx(joint, tmp_path / "max.onnx", example_size=SIZE)
    assert not result.dynamic_size
    assert ort.InferenceSession(str(result.path)).get_inputs()[0].shape == ["batch", 3, *SIZE]
    _check(result.path, names, models, [(2, *SIZE), (1, *SIZE)])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run(result.path, torch.rand(1, 3, *OTHER))  # the fixed size is enforced, not silently wrong


# --- nlseg export: the user's journey -----------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    """A Cityscapes recipe for a small fcn_r18 and a checkpoint of it (as tests/test_predict.py writes one)."""
    import yaml

    from nlseg.config import load_config
    from nlseg.data import Cityscapes
    from nlseg.engine.checkpoint import save_checkpoint

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "fcn_r18", "options": {"backbone_width": 8, "head_channels": 16}},
        "data": {"dataset": "cityscapes", "root": str(tmp_path / "unused")},
    }))
    torch.manual_seed(0)
    model = nlseg.create_model("fcn_r18", num_classes=19, backbone_width=8, head_channels=16)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "fcn_r18", "num_classes": 19,
                     "class_names": list(Cityscapes.classes), "config": load_config(recipe).to_dict(),
                     "iteration": 4}, checkpoint)
    return recipe, checkpoint


def test_exported_file_segments_a_photo_as_nlseg_predict_does(tiny, tmp_path, capsys):
    recipe, checkpoint = tiny
    out = tmp_path / "export" / "model.onnx"
    # no RECIPE: the checkpoint holds the model and its normalisation
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--height", "37", "--width", "53"]) == 0
    printed = capsys.readouterr().out
    assert "any H and W" in printed and "at 37x53" in printed and "at 28x36" in printed  # checked at two sizes
    photo = tmp_path / "street.png"
    yy, xx = np.mgrid[0:45, 0:61]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1) % 256  # colour ramps: several classes
    rgb += np.random.default_rng(3).integers(0, 40, rgb.shape)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(photo)
    # what a user of the ONNX file does: the image as read, / 255, NCHW; argmax of the logits
    image = torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    logits = _run(out, image)[0]  # (19, 45, 61)
    assert main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--input", str(photo),
                 "--output", str(tmp_path / "pred"), "--device", "cpu", "--set", "eval.mode=whole",
                 "eval.flip=false"]) == 0
    labels = torch.from_numpy(np.array(Image.open(tmp_path / "pred" / "street.png"))).long()
    top2 = logits.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-3  # pixels whose class no rounding can flip
    assert clear.float().mean() > 0.95 and len(labels.unique()) >= 3
    assert torch.equal(logits.argmax(0)[clear], labels[clear])


def test_saved_file_names_its_dynamic_axes_batch_height_width(tiny, tmp_path, capsys):
    """The dim_params of the saved graph's input and output: named for what they are, shared by both."""
    import onnx

    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny[1]), "--out", str(out), "--height", "37", "--width", "53"]) == 0
    graph = onnx.load(str(out)).graph

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in graph.input] == [("image", ["batch", 3, "height", "width"])]
    assert [(v.name, dims(v)) for v in graph.output] == [("logits", ["batch", 19, "height", "width"])]
    inner = {d.dim_param for v in graph.value_info for d in v.type.tensor_type.shape.dim if d.dim_param}
    assert {"batch", "height", "width"} <= inner and not any(p.startswith("s") and p[1:].isdigit() for p in inner)


def _one_error_line(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("nlseg export: error: ") and all(f in err for f in fragments), err


def test_export_refuses_what_it_cannot_do_in_one_line(tiny, tmp_path, capsys, monkeypatch):
    recipe, checkpoint = tiny
    base = ["export", "--checkpoint", str(checkpoint)]
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"old")
    assert main([*base, "--out", str(existing)]) == 2
    _one_error_line(capsys, str(existing), "--overwrite")
    assert existing.read_bytes() == b"old"
    assert main([*base, "--out", str(tmp_path / "m.onnx"), "--format", "tflite"]) == 2
    _one_error_line(capsys, "'tflite'", "onnx")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main([*base, "--out", str(blocker / "m.onnx")]) == 2
    _one_error_line(capsys, "--out", str(blocker))
    assert main([*base, "--out", str(tmp_path / "m.onnx"), "--opset", "11"]) == 2
    _one_error_line(capsys, "opset 11", "18")
    other = tmp_path / "other.yaml"
    other.write_text(recipe.read_text().replace("fcn_r18", "denoised_nl_r18"))
    assert main(["export", str(other), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "fcn_r18", "denoised_nl_r18")

    import importlib.util

    find_spec = importlib.util.find_spec
    without_onnxscript = lambda name, *rest: None if name == "onnxscript" else find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without_onnxscript)
    assert main([*base, "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "onnxscript", "pip install nlseg[onnx]")
    assert not (tmp_path / "m.onnx").exists()
