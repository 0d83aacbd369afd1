"""CUDA paths: each op's fast path against its reference on the GPU (forward and backward), every model family
on the GPU against the CPU, AMP training on the GPU whose loss falls, and ``nlseg eval`` / ``nlseg predict``
with ``--device cuda`` against ``--device cpu``.

Every test here is marked ``cuda`` and skips on a machine without CUDA: ``pytest -m cuda`` runs them, and
``benchmarks/gpu_check.py`` runs that on a GPU machine.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from nlseg.cli import main
from nlseg.config import load_config
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.trainer import train
from nlseg.models import create_model, list_models, model_options
from nlseg.ops import (
    channel_attention,
    channel_attention_reference,
    criss_cross_attention,
    criss_cross_attention_reference,
    denoised_attention,
    denoised_attention_reference,
    local_aggregate,
    local_aggregate_reference,
    local_relation,
    local_relation_reference,
    nonlocal_attention,
    nonlocal_attention_reference,
    pyramid_sample,
    pyramid_sample_reference,
)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
TIGHT = dict(rtol=1e-7, atol=1e-9)  # float64 on the GPU against float64 on the GPU
FLOAT32 = dict(rtol=2e-3, atol=2e-4)  # float32 fast path on the GPU (cuBLAS, SDPA kernels) against float64
SMALL = {"backbone_width": 8, "head_channels": 16, "key_channels": 8, "value_channels": 8}


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """Full float32 convolutions and matrix products, so the GPU and the CPU compute the same function."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_fast_matches_reference_on_cuda(fast: Callable, reference: Callable, inputs: tuple[torch.Tensor, ...],
                                          dtype: torch.dtype, **tol) -> None:
    """fast(*inputs) on the GPU in ``dtype`` == reference(*inputs) on the GPU in float64, and so are the
    gradients with respect to every input under one random upstream gradient."""
    leaves_fast = [t.to(CUDA, dtype).requires_grad_() for t in inputs]
    leaves_ref = [t.to(CUDA, torch.float64).requires_grad_() for t in inputs]
    out_fast, out_ref = fast(*leaves_fast), reference(*leaves_ref)
    assert out_fast.device.type == "cuda" and out_fast.dtype == dtype
    torch.testing.assert_close(out_fast.double(), out_ref, **tol)
    weights = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(CUDA)
    grads_fast = torch.autograd.grad((out_fast.double() * weights).sum(), leaves_fast)
    grads_ref = torch.autograd.grad((out_ref * weights).sum(), leaves_ref)
    for g_fast, g_ref in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(g_fast.double(), g_ref, **tol)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """max |actual - expected| <= rel · max |expected|: float32 on two devices, whatever the tensor's magnitude."""
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert error <= rel * scale + 1e-7, f"{what}: max error {error:.3g} against max |value| {scale:.3g}"


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- ops: fast path == reference, forward and backward, on the GPU ----------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TIGHT), (torch.float32, FLOAT32)], ids=["f64", "f32"])
@pytest.mark.parametrize("rectify,retain", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_denoised_attention_on_cuda(dtype, tol, rectify, retain, chunk_size):
    q, k, v = randn(2, 5, 6, 7, seed=0), randn(2, 5, 6, 7, seed=1), randn(2, 3, 6, 7, seed=2)
    p = torch.softmax(randn(2, 4, 6, 7, seed=3) * 2, dim=1)
    options = dict(rectify=rectify, retain=retain)
    assert_fast_matches_reference_on_cuda(
        lambda *t: denoised_attention(*t, chunk_size=chunk_size, **options),
        lambda *t: denoised_attention_reference(*t, **options),
        (q, k, v, p) if rectify else (q, k, v), dtype, **tol,  # without GR the class probabilities are unused
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TIGHT), (torch.float32, FLOAT32)], ids=["f64", "f32"])
@pytest.mark.parametrize("ck,cv,scale", [(8, 8, None), (16, 8, 1.0), (8, 16, 0.3)])
def test_nonlocal_attention_on_cuda(dtype, tol, ck, cv, scale):
    # (B, N, C) tokens viewed from (B, C, N) maps: the non-contiguous layout the blocks pass in.
    q, k, v = (randn(2, c, n, seed=s).transpose(1, 2) for s, (c, n) in enumerate([(ck, 37), (ck, 23), (cv, 23)]))
    assert_fast_matches_reference_on_cuda(
        lambda *t: nonlocal_attention(*t, scale=scale), lambda *t: nonlocal_attention_reference(*t, scale=scale),
        (q, k, v), dtype, **tol,
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TIGHT), (torch.float32, FLOAT32)], ids=["f64", "f32"])
def test_criss_cross_and_channel_attention_on_cuda(dtype, tol):
    q, k, v = randn(2, 4, 5, 7, seed=0), randn(2, 4, 5, 7, seed=1), randn(2, 6, 5, 7, seed=2)
    assert_fast_matches_reference_on_cuda(criss_cross_attention, criss_cross_attention_reference, (q, k, v),
                                          dtype, **tol)
    x, keys = randn(2, 6, 5, 7, seed=3) * 0.3, randn(2, 3, 5, 7, seed=4) * 0.3
    assert_fast_matches_reference_on_cuda(channel_attention, channel_attention_reference, (x,), dtype, **tol)
    assert_fast_matches_reference_on_cuda(channel_attention, channel_attention_reference, (x, keys), dtype, **tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TIGHT), (torch.float32, FLOAT32)], ids=["f64", "f32"])
def test_local_ops_and_pyramid_sampling_on_cuda(dtype, tol):
    q, k, v = randn(2, 4, 6, 5, seed=0), randn(2, 4, 6, 5, seed=1), randn(2, 3, 6, 5, seed=2)
    weights = torch.sigmoid(randn(2, 9, 6, 5, seed=3))
    assert_fast_matches_reference_on_cuda(local_relation, local_relation_reference, (q, k), dtype, **tol)
    assert_fast_matches_reference_on_cuda(local_aggregate, local_aggregate_reference, (v, weights), dtype, **tol)
    x = randn(2, 3, 17, 13, seed=4)
    for mode in ("avg", "max"):
        assert_fast_matches_reference_on_cuda(lambda t: pyramid_sample(t, mode=mode),
                                              lambda t: pyramid_sample_reference(t, mode=mode), (x,), dtype, **tol)


# --- models: the GPU computes what the CPU computes --------------------------------------------------------


def one_model_per_family() -> list[str]:
    """The smallest-depth registered model of each family (``fcn_r18``, ``ann_r50``, ``danet_r50``, ...)."""
    smallest: dict[str, tuple[int, str]] = {}
    for name in list_models():
        family, depth = re.fullmatch(r"(.+)_r(\d+)", name).groups()
        smallest[family] = min(smallest.get(family, (10**6, "")), (int(depth), name))
    return sorted(name for _, name in smallest.values())


def small_model(name: str, num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    accepted = model_options(name)
    model = create_model(name, num_classes=num_classes, **{k: v for k, v in SMALL.items() if k in accepted})
    with torch.no_grad():  # zero-initialised outputs (γ, Wo) get values, so every block changes the logits
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", one_model_per_family())
def test_model_forward_on_cuda_equals_cpu(name):
    model = small_model(name)
    x = torch.randn(2, 3, 33, 49, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on_cpu = model(x)
        on_gpu = model.to(CUDA)(x.to(CUDA))
    assert on_gpu["out"].device.type == "cuda" and on_gpu["out"].shape == (2, 3, 33, 49)
    assert_close_to_scale(on_gpu["out"].cpu(), on_cpu["out"], 1e-3, "out")
    assert len(on_gpu["aux"]) == len(on_cpu["aux"])
    for i, (gpu_aux, cpu_aux) in enumerate(zip(on_gpu["aux"], on_cpu["aux"], strict=True)):
        assert_close_to_scale(gpu_aux.cpu(), cpu_aux, 1e-3, f"aux {i}")


@pytest.mark.parametrize("name", ["denoised_nl_r18", "ann_r50"])
def test_model_backward_on_cuda_equals_cpu(name):
    """Gradients of every parameter agree: the Denoised NL op's and SDPA's CUDA backward inside a model."""
    model = small_model(name)
    x = torch.randn(1, 3, 33, 49, generator=torch.Generator().manual_seed(0))
    grads = {}
    for device in ("cpu", "cuda"):
        model.to(device).zero_grad()
        outputs = model(x.to(device))
        (outputs["out"].square().mean() + sum(a.square().mean() for a in outputs["aux"])).backward()
        grads[device] = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["cpu"].keys() == grads["cuda"].keys() and grads["cpu"]
    for key, grad in grads["cpu"].items():
        assert_close_to_scale(grads["cuda"][key], grad, 1e-3, key)


# --- training with AMP on the GPU; eval and predict with --device cuda --------------------------------------

AUX = {"fcn_r18": [0.4], "denoised_nl_r18": [1.0, 1.0]}


def write_recipe(path: Path, model: str, **train: object) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"name": model, "options": {"backbone_width": 8, "head_channels": 16}
                  | ({"key_channels": 8} if "key_channels" in model_options(model) else {})},
        "data": {"dataset": "synthetic", "crop_size": 48, "scale_range": [1.0, 1.0], "num_workers": 0,
                 "options": {"length": 8, "size": 48}},
        "loss": {"main": "ce", "aux_weights": AUX[model]},
        "train": {"iters": 30, "batch_size": 4, "lr": 0.02, "checkpoint_interval": 30, "log_interval": 1,
                  "device": "cuda", "evaluate": False, **train},
    }))
    return path


def train_losses(work: Path) -> list[float]:
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return [r["loss_total"] for r in records if r["kind"] == "train"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("model", sorted(AUX))
def test_amp_training_on_cuda_loss_falls(tmp_path, model, amp):
    train(load_config(write_recipe(tmp_path / "r.yaml", model, amp=amp), purpose="train"), tmp_path / "work")
    losses = train_losses(tmp_path / "work")
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    state = load_checkpoint(tmp_path / "work" / "last.pt")
    assert state["iteration"] == 30
    # fp16 scales the loss (the scale is a power of two, lowered at each skipped step); bf16 needs no scaling
    assert bool(state["scaler"]) == (amp == "fp16")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A recipe and a checkpoint of a short Denoised NL run on the GPU."""
    root = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(root / "r.yaml", "denoised_nl_r18", iters=20)
    train(load_config(recipe, purpose="train"), root / "work")
    return recipe, root / "work" / "last.pt"


def test_eval_on_cuda_scores_as_on_cpu(trained, tmp_path):
    recipe, checkpoint = trained
    scores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        assert main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--device", device,
                     "--out", str(out)]) == 0
        scores[device] = json.loads(out.read_text())
    assert abs(scores["cuda"]["mIoU"] - scores["cpu"]["mIoU"]) < 0.5, scores
    assert abs(scores["cuda"]["aAcc"] - scores["cpu"]["aAcc"]) < 0.1, scores


def test_predict_on_cuda_labels_as_on_cpu(trained, tmp_path):
    recipe, checkpoint = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / f"{i}.png")
    labels = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["predict", str(recipe), "--checkpoint", str(checkpoint), "--device", device,
                     "--input", str(images), "--output", str(out)]) == 0
        labels[device] = np.stack([np.array(Image.open(out / f"{i}.png")) for i in range(2)])
    assert labels["cuda"].shape == (2, 40, 56)
    assert (labels["cuda"] == labels["cpu"]).mean() > 0.999  # argmax may flip only where two logits tie to 1e-5
