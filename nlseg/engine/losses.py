"""Losses of the recipes: cross-entropy, OHEM cross-entropy, and deep supervision weights.

Models return logits only (``{"out": ..., "aux": [...]}``); the recipe decides the losses:
Denoised NL (Eq. 5): ``L = Lp + 1.0·L1 + 1.0·L2``, all cross-entropy. ANN (Eq. 18):
``L = L_final + 0.4·L_stage4`` with online hard example mining on ``L_final``.

Class weights (``loss.class_weights``, the released ANN Cityscapes run's ``ce_weight``) weigh every pixel's
cross-entropy by its true class's weight, in the main loss and the auxiliary ones. Cross-entropy then
divides by the sum of the weights of the pixels (PyTorch's weighted mean, as released); OHEM selects its
pixels by the unweighted probability of the true class and divides the weighted sum by the number of pixels
kept, as the released ``FSOhemCELoss`` does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlseg.config import LossConfig

__all__ = ["OhemCrossEntropy", "SegmentationLoss"]


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hardest pixels only (online hard example mining; ANN §4.2).

    Pixels whose predicted probability of the true class is below ``threshold`` are kept; when fewer
    than ``min_kept`` are, the threshold rises to the ``min_kept``-th smallest probability so that at
    least that many of the hardest pixels count. The loss is the mean over the kept pixels.

    With ``weight`` each kept pixel's loss is multiplied by its true class's weight before the mean over the
    kept pixels (the selection does not read the weights): ``sum_kept w[y_i] · l_i / n_kept`` (released ANN).

    Args:
        threshold: probability under which a pixel is hard.
        min_kept: the least number of pixels kept.
        ignore_index: label of pixels that count nowhere.
        weight: one weight per class, or None.
    """

    def __init__(
        self,
        threshold: float = 0.7,
        min_kept: int = 100_000,
        ignore_index: int = 255,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"OHEM threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.min_kept = min_kept
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none").flatten()
        valid = target.flatten() != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0:
            return logits.sum() * 0.0  # keeps the graph, contributes nothing
        with torch.no_grad():
            prob = torch.exp(-pixel_loss[valid])  # probability of the true class
            threshold = self.threshold
            if self.min_kept > 0:
                kth = prob.kthvalue(min(self.min_kept, num_valid)).values.item()
                threshold = max(threshold, kth)
            keep = torch.zeros_like(valid)
            keep[valid] = prob <= threshold
        if self.weight is not None:
            classes = target.flatten().where(valid, 0)  # (B·H·W,) ignored pixels read class 0, never kept
            pixel_loss = pixel_loss * self.weight[classes]
        return pixel_loss[keep].mean()


class SegmentationLoss(nn.Module):
    """Main loss on ``out`` plus weighted cross-entropy on each auxiliary output.

    ``forward`` returns the total and the parts (``main``, ``aux0``, ``aux1``, ...) so that a
    non-finite value can be traced to its head.
    """

    def __init__(self, cfg: LossConfig, ignore_index: int = 255) -> None:
        super().__init__()
        weight = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
        if cfg.main == "ce":
            self.main: nn.Module = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        elif cfg.main == "ohem":
            self.main = OhemCrossEntropy(cfg.ohem_threshold, cfg.ohem_min_kept, ignore_index, weight=weight)
        else:
            raise ValueError(f"loss.main must be 'ce' or 'ohem', got {cfg.main!r}")
        self.aux = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.aux_weights: Sequence[float] = tuple(cfg.aux_weights)

    def forward(self, outputs: dict[str, Tensor | list[Tensor]], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        aux = outputs.get("aux", [])
        if len(aux) != len(self.aux_weights):
            raise ValueError(
                f"the model returns {len(aux)} auxiliary outputs but loss.aux_weights has {len(self.aux_weights)} "
                f"({list(self.aux_weights)}); set loss.aux_weights to one weight per auxiliary output"
            )
        parts = {"main": self.main(outputs["out"], target)}
        total = parts["main"]
        for i, (logits, weight) in enumerate(zip(aux, self.aux_weights)):
            parts[f"aux{i}"] = self.aux(logits, target)
            total = total + weight * parts[f"aux{i}"]
        return total, parts
