"""Losses of the recipes: cross-entropy, OHEM cross-entropy, and deep supervision weights.

Models return logits only (``{"out": ..., "aux": [...]}``); the recipe decides the losses:
Denoised NL (Eq. 5): ``L = Lp + 1.0·L1 + 1.0·L2``, all cross-entropy. ANN (Eq. 18):
``L = L_final + 0.4·L_stage4`` with online hard example mining on ``L_final``.
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
    """

    def __init__(self, threshold: float = 0.7, min_kept: int = 100_000, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"OHEM threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.min_kept = min_kept
        self.ignore_index = ignore_index

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
        return pixel_loss[keep].mean()


class SegmentationLoss(nn.Module):
    """Main loss on ``out`` plus weighted cross-entropy on each auxiliary output.

    ``forward`` returns the total and the parts (``main``, ``aux0``, ``aux1``, ...) so that a
    non-finite value can be traced to its head.
    """

    def __init__(self, cfg: LossConfig, ignore_index: int = 255) -> None:
        super().__init__()
        if cfg.main == "ce":
            self.main: nn.Module = nn.CrossEntropyLoss(ignore_index=ignore_index)
        elif cfg.main == "ohem":
            self.main = OhemCrossEntropy(cfg.ohem_threshold, cfg.ohem_min_kept, ignore_index)
        else:
            raise ValueError(f"loss.main must be 'ce' or 'ohem', got {cfg.main!r}")
        self.aux = nn.CrossEntropyLoss(ignore_index=ignore_index)
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
