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

The stored fingerprints are computed in float64 (weights, inputs and every kernel), so they pin the
function and not one CPU's float32 rounding: float32 sums through a 101-layer backward depend on which
oneDNN kernels the CPU gets (``ONEDNN_MAX_CPU_ISA=SSE41`` moves some gradient projections by 4e-3),
float64 sums by about 1e-13. They are compared with a tolerance of 1e-7 of each tensor's scale. The same
weights are then run in float32, the dtype users train in: its outputs must lie within 1e-4 of the
float64 tensors (relative to their norm) and its gradients within 0.25, which catches a fast path that
only float32 takes, or a float32 overflow, on any CPU.

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
from conftest import deep_is_slow

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

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
    Values are rounded to float32 in any dtype.
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
            tensor.copy_(values.float())  # float32 values, so the float32 and float64 runs share them


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


def run(module: nn.Module, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> dict:
    """Eval-mode outputs, then train-mode outputs with dropout off, and the gradients of a fixed scalar.

    The module's weights are filled by :func:`fill_weights` and it runs in ``dtype`` (inputs too).
    Returns the tensors: ``eval`` and ``train`` (lists), ``grad`` (every parameter gradient, ordered by
    key seed, then the inputs' gradients, flattened into one vector) and ``num_params_with_grad``.
    """
    module.to(dtype)
    fill_weights(module)
    inputs = tuple(x.to(dtype) for x in inputs)
    module.eval()
    with torch.no_grad():  # a model's eval outputs with its auxiliary heads, as stored
        eval_out = module(*inputs, with_aux=True) if isinstance(module, Segmentor) else module(*inputs)
    for m in module.modules():  # train mode (batch statistics), without dropout's randomness
        if isinstance(m, nn.Dropout2d | nn.Dropout):
            m.p = 0.0
    module.train()
    inputs = tuple(x.clone().requires_grad_(True) for x in inputs)
    train_out = _flatten(module(*inputs))
    scalar = sum((t * _weights_like(t, i)).sum() for i, t in enumerate(train_out))
    scalar.backward()
    grads = [p.grad for _, p in sorted(module.named_parameters(), key=lambda kv: _seed(kv[0])) if p.grad is not None]
    grads += [x.grad for x in inputs]
    return {
        "eval": [t.detach() for t in _flatten(eval_out)],
        "train": [t.detach() for t in train_out],
        "grad": torch.cat([g.double().flatten() for g in grads]),
        "num_params_with_grad": len(grads) - len(inputs),
    }


def fingerprint_run(result: dict) -> dict:
    """The stored form of :func:`run`'s float64 result: kilobytes instead of the tensors."""
    grad = result["grad"]
    return {
        "eval": [fingerprint(t) for t in result["eval"]],
        "train": [fingerprint(t) for t in result["train"]],
        "grad_sumsq": grad.square().sum().item(),
        "grad_proj": (_projections(grad.numel(), 2) @ grad).tolist(),
        "num_params_with_grad": result["num_params_with_grad"],
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


GOLDEN_RTOL = 1e-7
"""Float64 fingerprints agree to ~1e-13 across CPUs and kernels; a real change of function moves them by
far more than 1e-7 of the tensor's scale (a bias or a scale changed in one block does)."""

FLOAT32_RTOL = 1e-4
"""Float32 outputs against float64, as a ratio of norms: up to 2e-6 seen, with any oneDNN ISA."""

FLOAT32_GRAD_RTOL = 0.25
"""Float32 gradients against float64, as a ratio of norms. The train-mode backward of these deep random
networks is ill-conditioned (batch norm over near-constant maps): float32 gradients lie 1e-6..2e-2 from
float64 ones (2.1e-2 the worst, with any oneDNN ISA). This bound catches a NaN, an overflow or a wrong float32-only path, not
rounding; the float64 fingerprints pin the gradients themselves."""


def _close(got, want, scale: float, what: str) -> None:
    got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=GOLDEN_RTOL, atol=GOLDEN_RTOL * scale, msg=lambda m: f"{what}: {m}")


def _compare(got: dict, want: dict, where: str) -> None:
    """Every fingerprint entry within GOLDEN_RTOL of the tensor's scale.

    A sum or projection of n values has the scale of their norm (sqrt(sumsq)); a single value that of
    their root mean square.
    """
    assert len(got["eval"]) == len(want["eval"]), where
    for kind in ("eval", "train"):
        for i, (g, w) in enumerate(zip(got[kind], want[kind])):
            what = f"{where} {kind}[{i}]"
            assert g["shape"] == w["shape"], f"{what} shape"
            norm = w["sumsq"] ** 0.5
            rms = norm / max(1, torch.Size(w["shape"]).numel()) ** 0.5
            _close(g["sumsq"], w["sumsq"], w["sumsq"], f"{what} sumsq")
            for key, scale in (("sum", norm), ("proj", norm), ("head", rms)):
                _close(g[key], w[key], scale, f"{what} {key}")
    assert got["num_params_with_grad"] == want["num_params_with_grad"], where
    _close(got["grad_sumsq"], want["grad_sumsq"], want["grad_sumsq"], f"{where} grad_sumsq")
    _close(got["grad_proj"], want["grad_proj"], want["grad_sumsq"] ** 0.5, f"{where} grad_proj")


def _compare_float32(got: dict, want: dict, where: str) -> None:
    """The float32 run's tensors within FLOAT32_RTOL of the float64 run's, as a ratio of norms."""
    pairs = [(f"{kind}[{i}]", g, w) for kind in ("eval", "train") for i, (g, w) in enumerate(zip(got[kind], want[kind]))]
    pairs.append(("grad", got["grad"], want["grad"]))
    for what, g, w in pairs:
        assert not g.is_floating_point() or what == "grad" or g.dtype == torch.float32, f"{where} {what}: {g.dtype}"
        error = (g.double() - w).norm().item() / max(w.norm().item(), 1e-30)
        bound = FLOAT32_GRAD_RTOL if what == "grad" else FLOAT32_RTOL
        assert error <= bound, f"{where} float32 {what} differs from float64 by {error:.2e} of its norm (up to {bound})"


def _check(kind: str, name: str, build, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run a fresh ``build()`` in float64 against the stored fingerprints, then in float32 against float64."""
    torch.manual_seed(0)
    exact = run(build(), inputs, torch.float64)
    result = fingerprint_run(exact)
    path = GOLDEN / f"{kind}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    if REGENERATE:
        stored[name] = result
        path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    assert name in stored, f"no golden output for {kind} {name!r}; regenerate with NLSEG_REGENERATE_GOLDEN=1"
    _compare(result, stored[name], f"{kind} {name}")
    torch.manual_seed(0)
    _compare_float32(run(build(), inputs, torch.float32), exact, f"{kind} {name}")


@pytest.mark.parametrize("name", deep_is_slow(nlseg.list_models()))
def test_model_matches_golden_output(name: str) -> None:
    options = _small_options(name)
    _check("models", name, lambda: nlseg.create_model(name, num_classes=NUM_CLASSES, **options), (_input(MODEL_INPUT, 0),))


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
    _check("blocks", name, BLOCKS[name], _block_inputs(name, BLOCKS[name]()))
