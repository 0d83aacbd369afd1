"""Inference: the inference-only model, whole-image or sliding-window prediction, multi-scale and flip testing,
the Segmenter API.

:func:`prepare_for_inference` turns a trained model into one that does only inference's work
(:class:`InferenceOptions`, the recipe's ``eval.aux``, ``eval.fold_bn``, ``eval.channels_last``, ``eval.amp``,
``eval.compile``): no auxiliary head the decoder does not read, batch norm folded into the convolutions,
channels-last tensors, optional bf16/fp16 autocast and ``torch.compile``. The exact levers (aux, folding,
layout) keep the float32 output to float rounding; autocast trades precision for speed
(``tests/test_inference_path.py`` states the tolerances).

How predictions are merged (ANN §4.2 "Inference Settings": multi-scale whole-image testing with
left-right flips for ADE20K and PASCAL Context, multi-scale sliding crops with flips for Cityscapes):

- Sliding window: the LOGITS of overlapping windows are averaged, each pixel divided by the number
  of windows covering it — what mmsegmentation's ``slide_inference``, the ANN release
  (``FCNSegmentorTest._crop_predict``) and the CCNet toolbox (``predict_sliding``) all do.
- Scales and flips: every view's logits are resized back to the input size, turned into softmax
  probabilities and the probabilities averaged, as mmsegmentation's test-time augmentation does
  (``aug_test`` / ``SegTTAModel`` sum softmax outputs). The ANN release sums the raw logits of the
  views instead (``ms_test``); the argmax rarely differs, and probabilities keep views with
  different logit scales on an equal footing.

So :func:`predict_probs` returns averaged class probabilities (they sum to 1 at every pixel);
their argmax is the prediction.

Segmenting folders of image files (``nlseg predict``) is :mod:`nlseg.engine.predict`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from nlseg.config import Config, EvalConfig
from nlseg.data import dataset_class
from nlseg.data.base import index_palette, read_image
from nlseg.data.transforms import normalization
from nlseg.engine.checkpoint import CheckpointError, check_compatible, load_checkpoint
from nlseg.engine.device import resolve_device
from nlseg.models.fold import fold_batchnorm

__all__ = [
    "AMP_DTYPES",
    "IMAGE_SUFFIXES",
    "InferenceModel",
    "InferenceOptions",
    "Segmenter",
    "build_model_from_checkpoint",
    "dataset_palette",
    "predict_probs",
    "predict_with_config",
    "prepare_for_inference",
    "saved_normalize",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_MODES = ("whole", "slide")

AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each ``amp`` setting other than ``off``."""


@dataclass(frozen=True)
class InferenceOptions:
    """What :func:`prepare_for_inference` does to a model; a recipe's ``eval`` section sets them (:meth:`from_eval`).

    Args:
        aux: also return the auxiliary heads' logits (deep supervision's outputs, unused by a prediction);
            False runs only the heads the decoder reads (the Denoised NL class map for Global Rectifying).
        fold_bn: fold every batch norm into the convolution before it (:func:`nlseg.models.fold.fold_batchnorm`).
        channels_last: the backbone's weights and maps in channels-last memory layout (faster convolutions on
            CPU and on tensor-core GPUs); the decoder and heads get contiguous maps unless ``channels_last_heads``.
        channels_last_heads: with ``channels_last``, the decoder and heads channels-last too. On the CPU (oneDNN)
            that is slower for the 3x3 convolutions over 1024-4096 channels that most heads have (1.3-1.6x for
            the decoders of ANN, NL, DANet and PSP at 512x1024), faster for ASPP's dilated ones
            (docs/efficiency.md, "The inference path").
        amp: ``off``, or autocast to ``bf16`` / ``fp16`` inside the forward (outputs are float32 again).
        compile: ``torch.compile`` the model (the first call at each input size compiles).
        compile_backend: the ``torch.compile`` backend (``inductor``; ``eager`` / ``aot_eager`` to check tracing).
    """

    aux: bool = False
    fold_bn: bool = True
    channels_last: bool = True
    channels_last_heads: bool = False
    amp: Literal["off", "bf16", "fp16"] = "off"
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.amp != "off" and self.amp not in AMP_DTYPES:
            raise ValueError(f"InferenceOptions.amp must be one of off, {', '.join(AMP_DTYPES)}; got {self.amp!r}")

    @classmethod
    def from_eval(cls, eval_cfg: EvalConfig, **changes: Any) -> InferenceOptions:
        """The options of a recipe's ``eval`` section (``eval.aux``, ``eval.fold_bn``, ...), with ``changes``."""
        fields = {f.name: getattr(eval_cfg, f.name) for f in dataclasses.fields(cls) if hasattr(eval_cfg, f.name)}
        return cls(**{**fields, **changes})


class InferenceModel(nn.Module):
    """A model prepared for inference by :func:`prepare_for_inference`; its forward keeps the model's contract.

    ``forward(x)`` returns ``{"out": (B, K, H, W), "aux": [...]}`` in float32, like the model in eval mode
    (``aux`` empty unless ``options.aux``; a model whose forward takes no ``with_aux`` returns what it returns).
    It cannot be put back in training mode.

    Args:
        model: the prepared model (folded, laid out, compiled as ``options`` say), in eval mode.
        options: what was done to it.
    """

    def __init__(self, model: nn.Module, options: InferenceOptions) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.num_classes = getattr(model, "num_classes", None)
        self.align_corners = bool(getattr(model, "align_corners", False))
        self.takes_with_aux = "with_aux" in inspect.signature(model.forward).parameters
        super().train(False)

    def train(self, mode: bool = True) -> InferenceModel:
        """Eval mode only: a folded or compiled model is for inference (train the original model instead)."""
        if mode:
            raise RuntimeError("an InferenceModel is for inference only; train the model it was prepared from")
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """x (B, 3, H, W) float32 -> {"out": (B, K, H, W) float32, "aux": [(B, K, H, W) float32, ...]}."""
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = self.options.amp != "off"
        with torch.autocast(x.device.type, dtype=AMP_DTYPES.get(self.options.amp), enabled=amp):
            result = self.model(x, with_aux=self.options.aux) if self.takes_with_aux else self.model(x)
        return {"out": result["out"].float(), "aux": [logits.float() for logits in result.get("aux", [])]}


def prepare_for_inference(
    model: nn.Module, options: InferenceOptions = InferenceOptions(), *, inplace: bool = False
) -> InferenceModel:
    """A module that does only inference's work with ``model``'s weights (see :class:`InferenceOptions`).

    The model passed in is left unchanged: the returned module runs on a deep copy (eval mode, no gradients),
    so a model that is still trained can be prepared for validation. ``inplace=True`` prepares ``model``
    itself instead, saving the copy, for a caller that owns it and will not train it again.

    Args:
        model: a segmentor whose forward takes ``with_aux`` (:class:`nlseg.models.base.Segmentor`).
        options: which levers to apply.
        inplace: fold and re-lay-out ``model`` itself rather than a copy.

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
        if options.channels_last_heads or backbone is None:
            model.to(memory_format=torch.channels_last)
        else:
            backbone.to(memory_format=torch.channels_last)
            backbone.register_forward_hook(_contiguous_features)
    if options.compile:
        model.compile(backend=options.compile_backend)
    return InferenceModel(model, options)


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


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """(height, width) from an int or a pair of positive ints."""
    h, w = (value, value) if isinstance(value, int) else tuple(value)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return int(h), int(w)


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear resize of a (B, C, H, W) tensor; a no-op at the same size."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _forward(model: nn.Module, image: Tensor, num_classes: int) -> Tensor:
    """The model's main logits for ``image`` (B, 3, H, W), checked against the ``{"out": ...}`` contract."""
    logits = model(image)["out"]
    expected = (image.shape[0], num_classes, *image.shape[-2:])
    if tuple(logits.shape) != expected:
        raise ValueError(f"the model's 'out' has shape {tuple(logits.shape)}; expected {expected} (B, K, H, W)")
    return logits.float()


def _slide(model: nn.Module, image: Tensor, crop: tuple[int, int], stride: tuple[int, int], num_classes: int) -> Tensor:
    """Logits of overlapping ``crop`` windows placed every ``stride`` pixels, averaged where they overlap.

    The image is zero-padded at the bottom and right up to the crop size when it is smaller (zero is the
    mean colour of a normalised image); the windows' last row and column are shifted to end at the
    border, so every pixel is covered, and the result is cropped back to the image's size.
    """
    b, _, h, w = image.shape
    (ch, cw), (sh, sw) = crop, stride
    padded = F.pad(image, (0, max(cw - w, 0), 0, max(ch - h, 0)))  # (B, 3, H', W')
    ph, pw = padded.shape[-2:]
    total = image.new_zeros(b, num_classes, ph, pw, dtype=torch.float32)  # (B, K, H', W')
    count = image.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    for row in range(math.ceil(max(ph - ch, 0) / sh) + 1):
        for col in range(math.ceil(max(pw - cw, 0) / sw) + 1):
            y1, x1 = min(row * sh, ph - ch), min(col * sw, pw - cw)
            window = padded[:, :, y1 : y1 + ch, x1 : x1 + cw]  # (B, 3, ch, cw)
            total[:, :, y1 : y1 + ch, x1 : x1 + cw] += _forward(model, window, num_classes)
            count[:, :, y1 : y1 + ch, x1 : x1 + cw] += 1
    return (total / count)[:, :, :h, :w]  # (B, K, H, W)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: Tensor,
    *,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size: int | Sequence[int] | None = None,
    num_classes: int,
    align_corners: bool | None = None,
) -> Tensor:
    """Class probabilities of one normalised batch, by whole-image or sliding-window inference (ANN §4.2).

    For every scale s (and, with ``flip``, for the mirrored image too): resize the image by s, predict
    it whole or by sliding windows, mirror back, resize the logits to the input size, softmax; the
    probabilities of all views are averaged (see the module docstring for why probabilities). The
    model's mode is left as it is: call ``model.eval()`` first.

    Args:
        model: returns ``{"out": logits (B, K, h, w)}`` at its input's size.
        image: (B, 3, H, W) normalised images.
        mode: ``whole`` (each view at once) or ``slide`` (crops of ``crop_size`` every ``stride``).
        crop_size: sliding window (H, W) or side; required for ``slide``. An image smaller than the
            window is padded with zeros and the prediction cropped back.
        stride: window step (H, W) or side, at most the window; None: two thirds of the window
            (windows overlap by a third, as the CCNet toolbox).
        scales: resize factors of the views (multi-scale testing).
        flip: also predict each view mirrored left-right.
        size: resize the input to this (H, W) (or a square side) before everything else; the result is
            still returned at the input's size.
        num_classes: K, checked against the model's output.
        align_corners: of every bilinear resize; None: the model's ``align_corners`` attribute if it has
            one, else False.

    Returns:
        (B, K, H, W) float32 probabilities averaged over the views.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a (B, 3, H, W) batch, got shape {tuple(image.shape)}")
    if mode not in _MODES:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {', '.join(_MODES)}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive factors, got {list(scales)!r}")
    if mode == "slide":
        if crop_size is None:
            raise ValueError("mode 'slide' needs crop_size (eval.crop_size in a recipe)")
        crop = _pair(crop_size, "crop_size")
        steps = (math.ceil(crop[0] * 2 / 3), math.ceil(crop[1] * 2 / 3)) if stride is None else _pair(stride, "stride")
        if steps[0] > crop[0] or steps[1] > crop[1]:
            raise ValueError(f"stride {steps} must not exceed crop_size {crop}: windows would leave gaps")
    if align_corners is None:
        align_corners = bool(getattr(model, "align_corners", False))
    h, w = image.shape[-2:]
    base = image if size is None else _resize(image, _pair(size, "size"), align_corners)
    bh, bw = base.shape[-2:]
    total = image.new_zeros(image.shape[0], num_classes, h, w, dtype=torch.float32)  # (B, K, H, W)
    views = 0
    for scale in scales:
        scaled = _resize(base, (max(1, int(bh * scale + 0.5)), max(1, int(bw * scale + 0.5))), align_corners)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            if mode == "whole":
                logits = _forward(model, view, num_classes)
            else:
                logits = _slide(model, view, crop, steps, num_classes)
            if mirrored:
                logits = logits.flip(-1)
            total += _resize(logits, (h, w), align_corners).softmax(1)
            views += 1
    return total / views


def predict_with_config(
    model: nn.Module, image: Tensor, eval_cfg: EvalConfig, *, num_classes: int, align_corners: bool | None = None
) -> Tensor:
    """:func:`predict_probs` with the settings of a recipe's ``eval`` section (mode, crop, stride,
    scales, flip, size): (B, K, H, W) probabilities of a (B, 3, H, W) normalised batch."""
    return predict_probs(
        model,
        image,
        mode=eval_cfg.mode,
        crop_size=eval_cfg.crop_size,
        stride=eval_cfg.stride,
        scales=eval_cfg.scales,
        flip=eval_cfg.flip,
        size=eval_cfg.size,
        num_classes=num_classes,
        align_corners=align_corners,
    )


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


def _check_checkpoint_path(path: Path) -> None:
    """A CheckpointError for a path that cannot be a checkpoint file, before torch tries to read it."""
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; expected a checkpoint file such as "
            f"{path / 'best.pt'} or {path / 'last.pt'}"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")


def build_model_from_checkpoint(
    path: str | os.PathLike,
    cfg: Config | None = None,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its weights, in eval mode.

    The model's name and builder options come from the checkpoint (``model_name``,
    ``config.model.options``); a checkpoint without them needs ``cfg``. With ``cfg`` the checkpoint
    must be for the recipe's model (and for ``num_classes`` classes when given).

    Args:
        path: an nlseg checkpoint.
        cfg: the recipe it is used with, or None.
        device: where to put the model: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device.
        num_classes: the data set's number of classes, checked when given.

    Returns:
        the model and the checkpoint dict.

    Raises:
        CheckpointError: unreadable file, another model or class count, weights that do not fit.
    """
    from nlseg.models import create_model

    _check_checkpoint_path(Path(path))
    state = load_checkpoint(path)
    if cfg is not None or num_classes is not None:
        check_compatible(
            state,
            model_name=cfg.model.name if cfg is not None else state.get("model_name"),
            num_classes=num_classes if num_classes is not None else state.get("num_classes"),
            path=path,
        )
    saved_cfg = state.get("config") or {}
    name = state.get("model_name") or (cfg.model.name if cfg is not None else None)
    options = saved_cfg.get("model", {}).get("options", cfg.model.options if cfg is not None else {})
    classes = state.get("num_classes") or len(state.get("class_names", [])) or num_classes
    if name is None or classes is None:
        raise CheckpointError(
            f"checkpoint {path} does not say which model it holds (no 'model_name' / 'num_classes'); "
            "pass the recipe it was trained with"
        )
    try:
        model = create_model(name, num_classes=classes, **options)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot build its model {name!r}: {err}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit a {name!r} model with {classes} classes "
            f"({' '.join(line.strip() for line in first[:3])})"
        ) from None
    return model.to(resolve_device(device)).eval(), state


def saved_normalize(state: dict[str, Any], default: str = "imagenet") -> str:
    """The ``data.normalize`` a checkpoint's model was trained with; ``default`` for a checkpoint without it."""
    return ((state.get("config") or {}).get("data") or {}).get("normalize", default)


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
            self.options = options or InferenceOptions.from_eval(self.eval_cfg)
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
