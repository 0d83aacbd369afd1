"""Segmentation metrics from one confusion matrix over a whole split: mIoU, mAcc, aAcc.

Conventions, those of the official Cityscapes evaluator (cityscapesScripts,
``evaluation/evalPixelLevelSemanticLabeling.py``), which accumulates one confusion matrix over all
images and scores each class c by ``IoU_c = TP / (TP + FP + FN)``:

- pixels whose ground truth is ``ignore_index`` are dropped entirely, so a prediction there is
  never a false positive (the evaluator counts FP only on rows of non-ignored labels);
- a class absent from the ground truth but predicted somewhere has TP = FN = 0 < FP, so IoU 0,
  and it counts in the mean;
- a class absent from both has 0 / 0: NaN, left out of the mean (the evaluator's
  ``getScoreAverage`` skips NaN scores).

Accuracy of class c is ``TP / (TP + FN)`` (its recall), NaN for a class absent from the ground
truth; mAcc averages it over the classes present in the ground truth. aAcc is the fraction of
all non-ignored pixels predicted right. All results are percentages.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Pixel counts ``matrix[gt, pred]`` accumulated over batches (and processes, by ``reduce``).

    Args:
        num_classes: K; ground truth and predictions must be in 0..K-1 (or ``ignore_index`` for
            the ground truth).
        ignore_index: ground-truth value of pixels left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # (K, K) rows gt, cols pred

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    def _check_range(self, values: Tensor, what: str) -> None:
        bad = (values < 0) | (values >= self.num_classes)
        if bool(bad.any()):
            found = torch.unique(values[bad])[:10].tolist()
            raise ValueError(f"{what} values must be in 0..{self.num_classes - 1}; found {found}")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch. The counts move to the tensors' device; counting is one ``bincount`` there.

        Args:
            pred: predicted class indices (not logits), integer tensor of any shape.
            target: ground-truth class indices, same shape, ``ignore_index`` where unlabelled.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        for what, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{what} must hold integer class indices (take the argmax of logits), got {t.dtype}")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        target, pred = target.reshape(-1).long(), pred.reshape(-1).long()  # (P,)
        valid = target != self.ignore_index
        target, pred = target[valid], pred[valid]  # (P_valid,)
        self._check_range(target, "target")
        self._check_range(pred, "pred")
        k = self.num_classes
        counts = torch.bincount(target * k + pred, minlength=k * k)  # (K * K,)
        self.matrix += counts.view(k, k)

    def reduce(self) -> None:
        """Sum the counts over all processes of the default group (no-op without torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, float | list[float]]:
        """Scores of the accumulated counts.

        Returns:
            ``mIoU``, ``mAcc``, ``aAcc`` (percent; NaN when undefined) and ``per_class_iou``,
            ``per_class_acc`` (percent per class, NaN as described in the module docstring).
        """
        m = self.matrix.double().cpu()  # (K, K)
        tp = m.diagonal()
        gt = m.sum(1)  # TP + FN
        predicted = m.sum(0)  # TP + FP
        iou = tp / (gt + predicted - tp)  # 0 / 0 -> NaN for classes absent from both
        acc = tp / gt  # NaN for classes absent from the ground truth
        total = m.sum().item()
        return {
            "mIoU": 100 * iou.nanmean().item(),
            "mAcc": 100 * acc.nanmean().item(),
            "aAcc": 100 * tp.sum().item() / total if total > 0 else math.nan,
            "per_class_iou": (100 * iou).tolist(),
            "per_class_acc": (100 * acc).tolist(),
        }
