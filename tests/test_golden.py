"""Golden outputs: every registered model and every block class, at a fixed seed and a small size,
must reproduce the outputs and gradients stored in ``tests/golden/*.json``.

They pin behaviour across refactors (STYLE.md habit 13): a change that alters any function of the
package fails here. Weights are not the constructors' random initialisation (which depends on the
order in which modules are built) but are filled from a generator seeded by each state-dict key, so
the pinned function is the same for any construction order. A leading ``decoder.`` is dropped from a
key before seeding, so that gathering a segmentor's head modules into a ``decoder`` sub-module (with
old checkpoints remapped on load) keeps the same weights.

Each output is stored as a fingerprint (shape, sum, sum of squares, 8 fixed random projections and the
first 8 values), and the gradients of a fixed scalar of the outputs as their total squared norm and a
projection: kilobytes per model instead of the tensors.

Regenerate (only when a function is meant to change, and say so in the commit):
``NLSEG_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

import nlseg
from nlseg.blocks import (
    AFNB,
    APNB,
    ASPP,
    FNB,
    PPM,
    ChannelAttention,
    CommonFusion,
    CompactChannelAttention,
    CompactDualAttention,
    CompactPositionAttention,
    CrissCrossAttention,
    DenoisedNL,
    DualAttention,
    NonLocal2d,
    ObjectContext,
    PositionAttention,
    RCCAModule,
)
from nlseg.models.base import Segmentor

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("NLSEG_REGENERATE_GOLDEN") == "1"
NUM_CLASSES = 5
MODEL_INPUT = (2, 3, 65, 81)  # odd sides: every resize and padding path is exercised
BLOCK_SIZE = (2, 32, 9, 11)  # (B, C, H, W)

SMALL = dict(backbone_width=8, head_channels=16)
"""Model options that keep every network small; the attention blocks get small key/value widths too."""


def _small_options(name: str) -> dict:
    options = dict(SMALL)
    accepted = nlseg.models.model_options(name)
    for key, value in (("key_channels", 8), ("value_channels", 8)):
        if key in accepted:
            options[key] = value
    return options


def _seed(key: str) -> int:
    canonical = key[len("decoder."):] if key.startswith("decoder.") else key
    return zlib.crc32(canonical.encode())


def fill_weights(module: nn.Module) -> None:
    """Every floating-point tensor of the state dict from a generator seeded by its key.

    Running variances are positive (0.5..1.5); every other tensor is uniform in ±0.5 / sqrt(fan-in)
    for weights of rank > 1 and ±0.5 otherwise, so no block starts as the identity (γ = 0, Wo = 0).
    """
    with torch.no_grad():
        for key, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            gen = torch.Generator().manual_seed(_seed(key))
            values = torch.rand(tensor.shape, generator=gen, dtype=torch.float64)
            if key.endswith("running_var"):
                values = values + 0.5
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                values = (values - 0.5) / fan_in**0.5
            tensor.copy_(values.to(tensor.dtype))


def _projections(n: int, seed: int) -> torch.Tensor:
    return torch.randn(8, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fingerprint(t: torch.Tensor) -> dict:
    flat = t.detach().double().flatten()
    return {
        "shape": list(t.shape),
        "sum": flat.sum().item(),
        "sumsq": flat.square().sum().item(),
        "proj": (_projections(flat.numel(), 1) @ flat).tolist(),
        "head": flat[:8].tolist(),
    }


def run_and_fingerprint(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict:
    """Eval-mode outputs, then train-mode outputs with dropout off, and the gradients of a fixed scalar."""
    fill_weights(module)
    module.eval()
    with torch.no_grad():  # a model's eval outputs with its auxiliary heads, as stored
        eval_out = module(*inputs, with_aux=True) if isinstance(module, Segmentor) else module(*inputs)
    for m in module.modules():  # train mode (batch statistics), without dropout's randomness
        if isinstance(m, nn.Dropout2d | nn.Dropout):
            m.p = 0.0
    module.train()
    inputs = tuple(x.clone().requires_grad_(True) for x in inputs)
    train_out = module(*inputs)
    flat = _flatten(train_out)
    scalar = sum((t * _weights_like(t, i)).sum() for i, t in enumerate(flat))
    scalar.backward()
    grads = [p.grad for _, p in sorted(module.named_parameters(), key=lambda kv: _seed(kv[0])) if p.grad is not None]
    grads += [x.grad for x in inputs]
    grad = torch.cat([g.double().flatten() for g in grads])
    return {
        "eval": [fingerprint(t) for t in _flatten(eval_out)],
        "train": [fingerprint(t) for t in flat],
        "grad_sumsq": grad.square().sum().item(),
        "grad_proj": (_projections(grad.numel(), 2) @ grad).tolist(),
        "num_params_with_grad": len(grads) - len(inputs),
    }


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return [out["out"], *out.get("aux", [])]
    return [out]


def _weights_like(t: torch.Tensor, index: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + index)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def _input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _compare(got: dict, want: dict, where: str) -> None:
    assert len(got["eval"]) == len(want["eval"]), where
    for kind in ("eval", "train"):
        for i, (g, w) in enumerate(zip(got[kind], want[kind])):
            assert g["shape"] == w["shape"], f"{where} {kind}[{i}] shape"
            for key in ("sum", "sumsq", "proj", "head"):
                torch.testing.assert_close(
                    torch.tensor(g[key], dtype=torch.float64), torch.tensor(w[key], dtype=torch.float64),
                    rtol=2e-4, atol=2e-4, msg=lambda m: f"{where} {kind}[{i}] {key}: {m}",
                )
    assert got["num_params_with_grad"] == want["num_params_with_grad"], where
    for key in ("grad_sumsq", "grad_proj"):
        torch.testing.assert_close(
            torch.tensor(got[key], dtype=torch.float64), torch.tensor(want[key], dtype=torch.float64),
            rtol=2e-4, atol=2e-4, msg=lambda m: f"{where} {key}: {m}",
        )


def _check(kind: str, name: str, result: dict) -> None:
    path = GOLDEN / f"{kind}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    if REGENERATE:
        stored[name] = result
        path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    assert name in stored, f"no golden output for {kind} {name!r}; regenerate with NLSEG_REGENERATE_GOLDEN=1"
    _compare(result, stored[name], f"{kind} {name}")


@pytest.mark.parametrize("name", nlseg.list_models())
def test_model_matches_golden_output(name: str) -> None:
    torch.manual_seed(0)
    model = nlseg.create_model(name, num_classes=NUM_CLASSES, **_small_options(name))
    result = run_and_fingerprint(model, (_input(MODEL_INPUT, 0),))
    _check("models", name, result)


C = BLOCK_SIZE[1]
LOW = 24  # channels of the low-level map of the fusion blocks
BLOCKS = {
    # block classes with explicit arguments (not factory names), so the pinned module is unambiguous
    "NonLocal2d": lambda: NonLocal2d(C, key_channels=8, value_channels=8),
    "NonLocal2d_concat": lambda: NonLocal2d(C, key_channels=8, value_channels=8, fusion="concat"),
    "APNB": lambda: APNB(C, key_channels=8, value_channels=8),
    "ObjectContext": lambda: ObjectContext(C),
    "AFNB": lambda: AFNB(LOW, C, key_channels=8, value_channels=8, out_channels=C),
    "FNB": lambda: FNB(LOW, C, key_channels=8, value_channels=8, out_channels=C),
    "CommonFusion": lambda: CommonFusion(LOW, C),
    "DenoisedNL": lambda: DenoisedNL(C, key_channels=8),
    "DenoisedNL_logits": lambda: DenoisedNL(C, key_channels=8, class_input="logits"),
    "DenoisedNL_no_gr": lambda: DenoisedNL(C, key_channels=8, rectify=False),
    "DenoisedNL_no_lr": lambda: DenoisedNL(C, key_channels=8, retain=False),
    "PositionAttention": lambda: PositionAttention(C),
    "ChannelAttention": lambda: ChannelAttention(C),
    "DualAttention": lambda: DualAttention(C),
    "CompactPositionAttention": lambda: CompactPositionAttention(C),
    "CompactChannelAttention": lambda: CompactChannelAttention(C, C // 4),
    "CompactDualAttention": lambda: CompactDualAttention(C, compact_channels=2),
    "CrissCrossAttention": lambda: CrissCrossAttention(C, recurrence=2),
    "CrissCrossAttention_once": lambda: CrissCrossAttention(C, recurrence=1),
    "RCCAModule": lambda: RCCAModule(C),
    "PPM": lambda: PPM(C),
    "ASPP": lambda: ASPP(C),
}


def _block_inputs(name: str, block: nn.Module) -> tuple[torch.Tensor, ...]:
    b, c, h, w = BLOCK_SIZE
    x = _input(BLOCK_SIZE, 1)
    if name.startswith(("AFNB", "FNB", "CommonFusion")):
        return (_input((b, LOW, h, w), 2), x)
    if name.startswith("DenoisedNL") and block.rectify:
        classes = _input((b, 4, h, w), 3)
        return (x, classes if block.class_input == "logits" else classes.softmax(1))
    return (x,)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_matches_golden_output(name: str) -> None:
    torch.manual_seed(0)
    block = BLOCKS[name]()
    result = run_and_fingerprint(block, _block_inputs(name, block))
    _check("blocks", name, result)
