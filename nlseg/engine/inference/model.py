"""The inference-only model.

:func:`prepare_for_inference` turns a trained model into one that does only inference's work
(:class:`InferenceOptions`, the recipe's ``eval.aux``, ``eval.fold_bn``, ``eval.channels_last``, ``eval.fuse``,
``eval.amp``, ``eval.compile``): no auxiliary head the decoder does not read, batch norm folded into the
convolutions, channels-last tensors, the residual blocks' epilogues fused into oneDNN's convolutions on the CPU
(:mod:`nlseg.models.fuse`), optional bf16/fp16 autocast and the compiled path (:mod:`.compiled`: inductor with
frozen weights, ``auto`` when the job pays for it). The exact levers (aux, folding, layout, fusion) keep the
float32 output to float rounding; autocast trades precision for speed (``tests/test_inference_path.py`` states
the tolerances).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from nlseg.config import InferenceOptions
from nlseg.engine.inference.compiled import CompileGate
from nlseg.models.fold import fold_batchnorm
from nlseg.models.fuse import fuse_epilogues


AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each ``amp`` setting other than ``off``."""


class InferenceModel(nn.Module):
    """A model prepared for inference by :func:`prepare_for_inference`; its forward keeps the model's contract.

    ``forward(x)`` returns ``{"out": (B, K, H, W), "aux": [...]}`` in float32, like the model in eval mode
    (``aux`` empty unless ``options.aux``; a model whose forward takes no ``with_aux`` returns what it returns).
    It cannot be put back in training mode.

    Args:
        model: the prepared model (folded, laid out as ``options`` say), in eval mode.
        options: what was done to it.
        compile_backend: the ``torch.compile`` backend of ``options.compile`` (:class:`CompileGate`).
    """

    def __init__(self, model: nn.Module, options: InferenceOptions, compile_backend: str = "inductor") -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.gate = CompileGate(model, options.compile, backend=compile_backend)
        self.num_classes = getattr(model, "num_classes", None)
        self.align_corners = bool(getattr(model, "align_corners", False))
        self.takes_with_aux = "with_aux" in inspect.signature(model.forward).parameters
        super().train(False)

    def train(self, mode: bool = True) -> InferenceModel:
        """Eval mode only: a folded or compiled model is for inference (train the original model instead)."""
        if mode:
            raise RuntimeError("an InferenceModel is for inference only; train the model it was prepared from")
        return super().train(False)

    def plan(self, images: int, shapes: int | None) -> None:
        """The job ahead, for ``compile: auto``: ``images`` images over ``shapes`` distinct input shapes (None:
        unknown). See :meth:`CompileGate.plan`."""
        self.gate.plan(images, shapes)

    def image(self) -> AbstractContextManager[None]:
        """Context of one image's forward calls (``compile: auto`` times the first; :meth:`CompileGate.image`)."""
        return self.gate.image()

    def eager(self) -> AbstractContextManager[None]:
        """Context whose forward calls run eagerly and decide nothing (:meth:`CompileGate.eager`)."""
        return self.gate.eager()

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """x (B, 3, H, W) float32 -> {"out": (B, K, H, W) float32, "aux": [(B, K, H, W) float32, ...]}."""
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = self.options.amp != "off"
        with torch.autocast(x.device.type, dtype=AMP_DTYPES.get(self.options.amp), enabled=amp):
            result = self.gate(x, with_aux=self.options.aux) if self.takes_with_aux else self.gate(x)
        return {"out": result["out"].float(), "aux": [logits.float() for logits in result.get("aux", [])]}


def prepare_for_inference(
    model: nn.Module,
    options: InferenceOptions = InferenceOptions(),
    *,
    inplace: bool = False,
    channels_last_heads: bool = False,
    compile_backend: str = "inductor",
) -> InferenceModel:
    """A module that does only inference's work with ``model``'s weights (see :class:`InferenceOptions`).

    The model passed in is left unchanged: the returned module runs on a deep copy (eval mode, no gradients),
    so a model that is still trained can be prepared for validation. ``inplace=True`` prepares ``model``
    itself instead, saving the copy, for a caller that owns it and will not train it again.

    Args:
        model: a segmentor whose forward takes ``with_aux`` (:class:`nlseg.models.base.Segmentor`).
        options: which levers to apply: an :class:`~nlseg.config.InferenceOptions`, or a recipe's ``eval``
            section itself (an :class:`~nlseg.config.EvalConfig` is one).
        inplace: fold and re-lay-out ``model`` itself rather than a copy.
        channels_last_heads: with ``options.channels_last``, the decoder and heads channels-last too (a
            benchmark's knob: on the CPU, oneDNN runs the 3x3 convolutions over 1024-4096 channels that most
            heads have 1.3-1.6x slower channels-last, ASPP's dilated ones faster; docs/efficiency.md).
        compile_backend: the ``torch.compile`` backend of ``options.compile`` (``inductor``, with frozen weights;
            ``eager`` / ``aot_eager`` check tracing).

    Returns:
        an :class:`InferenceModel`: ``forward(x)`` gives ``{"out", "aux"}`` in float32.
    """
    if isinstance(model, InferenceModel):
        raise TypeError("prepare_for_inference: the model is already prepared; pass the model it was prepared from")
    if not inplace:
        model = copy.deepcopy(model)
        model.zero_grad(set_to_none=True)  # the copy's gradients: the trained model's, of no use here
    model.eval().requires_grad_(False)
    if options.fold_bn:
        fold_batchnorm(model)
    if options.channels_last:
        backbone = getattr(model, "backbone", None)
        if channels_last_heads or backbone is None:
            model.to(memory_format=torch.channels_last)
        else:
            backbone.to(memory_format=torch.channels_last)
            backbone.register_forward_hook(_contiguous_features)
    if options.fuse:
        fuse_epilogues(model)  # the blocks whose norms were folded
    return InferenceModel(model, options, compile_backend)


def _contiguous_features(module: nn.Module, inputs: Any, features: dict[str, Tensor]) -> Mapping[str, Tensor]:
    """Forward hook of a channels-last backbone: its stage maps, each made contiguous (NCHW) for the decoder and
    heads when first read (:class:`_ContiguousOnRead`)."""
    return _ContiguousOnRead(features)


class _ContiguousOnRead(Mapping[str, Tensor]):
    """A backbone's stage maps, each copied to a contiguous (NCHW) map when it is first read, in place of the
    channels-last one, which is freed: a stage nothing reads (layer1 for most decoders, layer3 without the
    auxiliary head) is never copied."""

    def __init__(self, features: dict[str, Tensor]) -> None:
        self._features = features

    def __getitem__(self, stage: str) -> Tensor:
        feature = self._features[stage]
        if not feature.is_contiguous():
            feature = self._features[stage] = feature.contiguous()
        return feature

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)
