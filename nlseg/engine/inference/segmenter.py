"""The Segmenter API: a trained checkpoint as a model that segments images (files, arrays, tensors), and the
checkpoint reading it rests on. Segmenting folders of image files (``nlseg predict``) is :mod:`nlseg.engine.predict`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from nlseg.config import Config, EvalConfig
from nlseg.data import dataset_class
from nlseg.data.base import index_palette, read_image
from nlseg.data.transforms import normalization

from nlseg.engine.device import resolve_device

from nlseg.engine.build import build_model_from_checkpoint, saved_normalize
from nlseg.engine.inference.merge import predict_with_config
from nlseg.engine.inference.model import InferenceModel, InferenceOptions, prepare_for_inference


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def dataset_palette(dataset: str, num_classes: int) -> list[tuple[int, int, int]]:
    """Colours of the classes of a data set: its own palette when it has one of ``num_classes`` colours.

    Otherwise (an unknown data set, PASCAL Context with 59 classes) the PASCAL VOC index colours
    without black, which is exactly PASCAL Context-59's palette.

    Args:
        dataset: a data set name (``cfg.data.dataset``).
        num_classes: number of classes K.

    Returns:
        K RGB tuples.
    """
    try:
        palette = list(dataset_class(dataset).palette)
    except ValueError:  # a data set nlseg does not know
        palette = []
    return palette if len(palette) == num_classes else index_palette(num_classes + 1)[1:]


class Segmenter:
    """Segment single images with a trained model, using a recipe's inference settings (ANN §4.2).

    Args:
        model: returns ``{"out": logits}``; taken over: moved to ``device`` and prepared in place by
            :func:`prepare_for_inference` (eval mode, batch norm folded, ...), so pass a copy of a model you
            will train further. An :class:`InferenceModel` is used as it is.
        class_names: the K class names.
        palette: K RGB colours, one per class.
        eval_cfg: inference settings (mode, crop, stride, scales, flip, size, and the levers of
            :class:`InferenceOptions`); None: the defaults (whole image, one scale).
        device: where the model runs (``auto``: CUDA when present).
        normalize: the input normalisation the model was trained with (``data.normalize``).
        options: how the model is prepared (:class:`InferenceOptions`); None: from ``eval_cfg``. Ignored for
            an :class:`InferenceModel`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        eval_cfg: EvalConfig | None = None,
        device: str | torch.device = "cpu",
        normalize: str = "imagenet",
        options: InferenceOptions | None = None,
    ) -> None:
        if len(palette) != len(class_names):
            raise ValueError(f"{len(class_names)} class names but {len(palette)} palette colours")
        self.device = resolve_device(device)
        self.eval_cfg = eval_cfg or EvalConfig()
        if isinstance(model, InferenceModel):
            self.model, self.options = model.to(self.device), model.options
        else:
            self.options = options or self.eval_cfg
            self.model = prepare_for_inference(model.to(self.device), self.options, inplace=True)
        self.class_names = list(class_names)
        self.palette = [tuple(int(c) for c in colour) for colour in palette]
        self.normalize = normalize
        self._normalization = normalization(normalize)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        eval_cfg: EvalConfig | None = None,
        options: InferenceOptions | None = None,
    ) -> Segmenter:
        """A Segmenter for a checkpoint; ``eval_cfg`` None uses the recipe's settings saved in it, ``options``
        None the inference levers of ``eval_cfg``."""
        model, state = build_model_from_checkpoint(path, device=device)
        saved = state.get("config") or {}
        if eval_cfg is None:
            eval_cfg = Config.from_dict({"eval": saved.get("eval", {})}, source=f"checkpoint {path}").eval
        dataset = saved.get("data", {}).get("dataset", "")
        return cls.from_state(model, state, dataset=dataset, eval_cfg=eval_cfg, device=device, options=options)

    @classmethod
    def from_state(
        cls,
        model: nn.Module,
        state: dict[str, Any],
        *,
        dataset: str,
        eval_cfg: EvalConfig | None = None,
        device: str | torch.device = "cpu",
        options: InferenceOptions | None = None,
    ) -> Segmenter:
        """A Segmenter for a model built from checkpoint ``state``: its class names (``class_0``, ... when
        it has none), the palette of data set ``dataset`` and the normalisation it was trained with."""
        num_classes = state.get("num_classes") or len(state["class_names"])
        names = state.get("class_names") or [f"class_{k}" for k in range(num_classes)]
        palette = dataset_palette(dataset, num_classes)
        return cls(model, class_names=names, palette=palette, eval_cfg=eval_cfg, device=device,
                   normalize=saved_normalize(state), options=options)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @staticmethod
    def to_tensor(image: str | os.PathLike | Image.Image | np.ndarray | Tensor) -> Tensor:
        """An image as a (3, H, W) float32 tensor in 0..1 (not normalised).

        Args:
            image: a file path, a PIL image, a uint8 (H, W, 3) array or a (3, H, W) float tensor in 0..1.
        """
        if isinstance(image, (str, os.PathLike)):
            return read_image(image)
        if isinstance(image, Image.Image):
            image = np.array(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"a numpy image must be uint8 of shape (H, W, 3), got {image.dtype} {image.shape}")
            return torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        if isinstance(image, Tensor):
            if not image.is_floating_point() or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"a tensor image must be float (3, H, W) in 0..1, got {image.dtype} {tuple(image.shape)}"
                )
            return image.float()
        raise TypeError(
            f"cannot read an image from {type(image).__name__}; expected a path, a PIL image, "
            "a uint8 (H, W, 3) numpy array or a float (3, H, W) tensor"
        )

    def predict_proba(self, image: str | os.PathLike | Image.Image | np.ndarray | Tensor) -> Tensor:
        """(K, H, W) class probabilities of one image at its own size (see :func:`predict_probs`)."""
        rgb = self.to_tensor(image).to(self.device)  # (3, H, W)
        image = self._normalization.image(rgb)[None]  # (1, 3, H, W)
        probs = predict_with_config(self.model, image, self.eval_cfg, num_classes=self.num_classes)
        return probs[0]

    def predict(
        self, image: str | os.PathLike | Image.Image | np.ndarray | Tensor, *, max_size: int | None = None
    ) -> Tensor:
        """(H, W) int64 class indices (train ids) of one image, at the image's own size.

        Args:
            image: see :meth:`to_tensor`.
            max_size: when the image's long side is longer, a copy whose long side is ``max_size``
                (bilinear, antialiased) is predicted and its class map enlarged back to the image's size
                by nearest neighbour, so time and memory follow ``max_size``, not the photo. None: full size.
        """
        rgb = self.to_tensor(image)  # (3, H, W)
        h, w = rgb.shape[-2:]
        if max_size is None or max(h, w) <= max_size:
            return self.predict_proba(rgb).argmax(0)
        if max_size < 1:
            raise ValueError(f"max_size must be a positive number of pixels, got {max_size}")
        scale = max_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False, antialias=True)
        pred = self.predict_proba(small[0].clamp_(0.0, 1.0)).argmax(0)  # (h', w')
        return F.interpolate(pred[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()  # (H, W)

    def colorize(self, pred: Tensor) -> np.ndarray:
        """(H, W, 3) uint8 colours of a (H, W) prediction."""
        lut = np.asarray(self.palette, dtype=np.uint8)  # (K, 3)
        return lut[pred.cpu().numpy()]

    def index_image(self, pred: Tensor) -> Image.Image:
        """A palette ("P") PNG image whose pixel values are the predicted train ids."""
        if self.num_classes > 256:
            raise ValueError(f"an index PNG holds at most 256 classes, this model has {self.num_classes}")
        img = Image.fromarray(pred.cpu().numpy().astype(np.uint8), mode="P")
        img.putpalette([c for colour in self.palette for c in colour])
        return img
