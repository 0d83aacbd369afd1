"""Export a trained segmentor to ONNX (``nlseg export``), and check the file in onnxruntime.

What the exported graph computes (:class:`ImageToLogits`):

* input ``image``: float32 (B, 3, H, W), RGB in 0..1 — an image as read (uint8 / 255), not normalised. The
  normalisation the model was trained with (``data.normalize``: ImageNet mean/std, or caffe's BGR 0..255
  means) is the first step inside the graph, so a user cannot feed the wrong one.
* output ``logits``: float32 (B, K, H, W), the main head's logits at the input's size (bilinear, as
  ``Segmentor`` resizes them). ``argmax`` over K is the prediction; ``softmax`` gives the probabilities
  that ``nlseg predict`` averages over views. The auxiliary heads are not outputs: the exporter drops the
  nodes only they feed (Denoised NL's class-map head stays, Global Rectifying reads it), and onnxruntime
  folds batch norms into the convolutions when it loads the file.

The batch, height and width are dynamic, and the file names them ``batch``, ``height`` and ``width`` (named
``torch.export.Dim`` objects; the output shares the input's names).

Blocks that pool adaptively to n x n bins (APNB/AFNB pyramid sampling, PPM, DRANet's compact position
attention) have bin edges that depend on the feature map's size, and ONNX has no adaptive pooling; while
exporting, their average pooling is two matrix products with averaging matrices computed in the graph from
the runtime height and width (:func:`nlseg.ops.adaptive_avg_pool`), so the file is right at any size. The
one exception is max pyramid pooling (``pool_mode="max"``, ANN Table 7 only): those models are exported at
the example size only (:func:`static_size_reason` says why), each bin one slice and max; ONNX's optimiser is
slow on that many nodes (an ANN R-18 at width 8 with (1, 3, 6, 8) max pyramids: ~4 minutes).

Random anchor sampling (``pool_mode="random"``, ANN Table 7's "random" and "pyramid random") is refused
(:func:`random_sampling_reason`): such a block draws new anchor positions at every forward, and an exported graph
would hold the one draw made while tracing, a different function from the model's.

The exporter is ``torch.onnx.export(dynamo=True)`` (it needs ``onnx`` and ``onnxscript``; the check needs
``onnxruntime``: ``pip install nlseg[onnx]``). While it traces, the Denoised NL op computes its function in
plain tensor ops (see :mod:`nlseg.ops.denoised`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nlseg.config import Config
from nlseg.data.transforms import normalization
from nlseg.engine.inference import build_model_from_checkpoint, saved_normalize
from nlseg.errors import ConfigError, NlsegError

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ImageToLogits",
    "OnnxExport",
    "compare_onnx",
    "export_checkpoint",
    "export_onnx",
    "random_sampling_reason",
    "require_onnx",
    "static_size_reason",
]

EXPORT_FORMATS: tuple[str, ...] = ("onnx",)
DEFAULT_OPSET = 18
"""The opset the dynamo exporter writes natively (the oldest it supports)."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ImageToLogits(nn.Module):
    """The exported function: RGB images in 0..1 -> the model's main logits at the images' size.

    Args:
        model: a segmentor returning ``{"out": logits, ...}``; used as it is (put it in eval mode).
        normalize: the input normalisation it was trained with (a ``data.normalize`` name).
    """

    def __init__(self, model: nn.Module, normalize: str = "imagenet") -> None:
        super().__init__()
        self.model = model
        self.normalization = normalization(normalize)

    def forward(self, image: Tensor) -> Tensor:
        """image (B, 3, H, W) RGB in 0..1 -> logits (B, K, H, W)."""
        return self.model(self.normalization.image(image))["out"]


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        opset: its ONNX opset.
        example_size: (H, W) of the example input the graph was traced with.
        static_reason: why height and width are fixed to ``example_size`` (None: they are dynamic).
        seconds: wall time of tracing, converting and saving.
        max_abs_diff: (H, W) -> the largest |onnxruntime - PyTorch| logit over a checked input of that size
            (filled by :func:`export_checkpoint`; empty when not checked).
    """

    path: Path
    opset: int
    example_size: tuple[int, int]
    static_reason: str | None
    seconds: float
    max_abs_diff: dict[tuple[int, int], float]

    @property
    def dynamic_size(self) -> bool:
        return self.static_reason is None

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def require_onnx() -> None:
    """Raise NlsegError naming ``pip install nlseg[onnx]`` when a package the export needs is missing."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise NlsegError(
            f"ONNX export needs the Python packages {', '.join(ONNX_PACKAGES)}; missing: {', '.join(missing)} "
            "(install them with `pip install nlseg[onnx]`)"
        )


def static_size_reason(model: nn.Module) -> str | None:
    """Why ``model``'s graph cannot take another height and width than the example's, or None if it can.

    A module with ``pool_mode="max"`` and ``pool_sizes`` holding some n > 1 (APNB, AFNB with ANN Table 7's max
    pyramid pooling) max-pools adaptively to n x n bins: their edges depend on the feature size and ONNX has no
    adaptive pooling. Average pooling to bins (APNB/AFNB by default, PPM, DRANet) is exported for any size, as
    :func:`nlseg.ops.adaptive_avg_pool`'s matrix form.
    """
    for name, module in model.named_modules():
        sizes = getattr(module, "pool_sizes", None) or ()
        if getattr(module, "pool_mode", "avg") == "max" and any(n > 1 for n in sizes):
            return (
                f"{name} ({type(module).__name__}) max-pools adaptively to {'/'.join(map(str, sizes))} bins whose "
                "edges depend on the feature size, and ONNX has no adaptive max pooling"
            )
    return None


RANDOM_SAMPLING_HINT = (
    "random anchor sampling draws new anchors at every forward and an exported graph would freeze one draw; "
    "expected 'avg' or 'max'"
)


def random_sampling_reason(options: dict, model: nn.Module | None = None, *, where: str = "recipe") -> str | None:
    """Why a model cannot be exported because it samples anchors at random (``pool_mode="random"``), or None.

    Args:
        options: the recipe's ``model.options``; a key ending in ``pool_mode`` set to ``"random"`` (ANN's
            ``context_pool_mode``) is named in the reason as ``model.options.<key>``.
        model: the built model, when there is one: any module whose ``pool_mode`` is ``"random"`` (APNB, AFNB
            built by other means) is named by its module path.
        where: what holds ``options`` (the recipe's file, a checkpoint), for the reason.
    """
    for key, value in options.items():
        if key.endswith("pool_mode") and value == "random":
            return f"{where}: model.options.{key} is 'random': {RANDOM_SAMPLING_HINT}"
    for name, module in (model.named_modules() if model is not None else ()):
        if getattr(module, "pool_mode", None) == "random":
            return f"{where}: {name} ({type(module).__name__}) has pool_mode 'random': {RANDOM_SAMPLING_HINT}"
    return None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and its warnings about optional packages (torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    normalize: str = "imagenet",
    example_size: tuple[int, int] = (512, 512),
    opset: int = DEFAULT_OPSET,
) -> OnnxExport:
    """Write ``ImageToLogits(model, normalize)`` as an ONNX file (see the module docstring for its contract).

    Args:
        model: a segmentor in eval mode, on the CPU (left unchanged).
        path: the ``.onnx`` file to write (replaced if it exists).
        normalize: the ``data.normalize`` the model was trained with.
        example_size: (H, W) of the example input; the only size a static-size model accepts.
        opset: ONNX opset, :data:`DEFAULT_OPSET` up to the newest the installed ``onnx`` knows.

    Returns:
        what was written.

    Raises:
        NlsegError: ``onnx``, ``onnxscript`` or ``onnxruntime`` is missing.
        ConfigError: a block that samples anchors at random, an opset outside the supported range, an example size
            under 1 pixel.
    """
    reason = random_sampling_reason({}, model, where="model")
    if reason is not None:
        raise ConfigError(f"cannot export: {reason}")
    require_onnx()
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise ConfigError(f"ONNX opset {opset} is not supported; expected {DEFAULT_OPSET} to {newest}")
    if min(example_size) < 1:
        raise ConfigError(f"export example size must be positive (height, width), got {tuple(example_size)}")
    path = Path(path)
    reason = static_size_reason(model)
    wrapper = ImageToLogits(model, normalize).eval()
    dims = {0: torch.export.Dim("batch")}
    if reason is None:
        dims |= {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    # Batch 2: torch.export specialises a dimension traced at size 1.
    example = torch.rand(2, 3, *example_size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, dynamic_shapes={"image": dims}, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
        )
        program.save(path)
    return OnnxExport(path, opset, tuple(example_size), reason, time.perf_counter() - start, {})


def compare_onnx(
    path: str | os.PathLike, model: nn.Module, normalize: str, sizes: Sequence[tuple[int, int]], *, seed: int = 0
) -> dict[tuple[int, int], float]:
    """Run the ONNX file in onnxruntime (CPU) and the model in PyTorch on the same random images.

    Args:
        path: a file written by :func:`export_onnx`.
        model: the model it was exported from, in eval mode.
        normalize: the normalisation it was exported with.
        sizes: (H, W) of the images to check, one image each.
        seed: seed of the random images (uniform in 0..1).

    Returns:
        (H, W) -> max |onnxruntime logits - PyTorch logits|.
    """
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = ImageToLogits(model, normalize).eval()
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for size in sizes:
        image = torch.rand(1, 3, *size, generator=generator)
        with torch.no_grad():
            expected = wrapper(image)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})
        diffs[tuple(size)] = float((torch.from_numpy(got) - expected).abs().max())
    return diffs


def _default_size(state: dict, cfg: Config | None) -> tuple[int, int]:
    """The recipe's sliding-window crop, else its training crop: the size the model saw."""
    saved = (state.get("config") or {}) if cfg is None else cfg.to_dict()
    size = (saved.get("eval") or {}).get("crop_size") or (saved.get("data") or {}).get("crop_size") or 512
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    cfg: Config | None = None,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    example_size: tuple[int, int] | None = None,
    check: bool = True,
) -> OnnxExport:
    """Rebuild a checkpoint's model (as ``nlseg eval`` / ``predict`` do), export it and check the file.

    Args:
        checkpoint: an nlseg checkpoint; its model name, options and normalisation come from it.
        path: the file to write.
        cfg: the recipe it was trained with, checked against the checkpoint; None trusts the checkpoint.
        format: one of :data:`EXPORT_FORMATS`.
        opset: see :func:`export_onnx`.
        example_size: (H, W) of the example input; None: the recipe's ``eval.crop_size``, else its
            ``data.crop_size``.
        check: compare onnxruntime with PyTorch at the example size and, when the size is dynamic, at a
            second size (recorded in ``max_abs_diff``).

    Raises:
        ConfigError: a model that samples anchors at random (checked first: in ``cfg`` before the checkpoint is
            read, else in the checkpoint's recipe and modules before tracing), an unknown format;
        CheckpointError: see ``build_model_from_checkpoint``.
    """
    if cfg is not None:
        reason = random_sampling_reason(cfg.model.options, where=f"recipe {cfg.name}")
        if reason is not None:
            raise ConfigError(f"cannot export: {reason}")
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    require_onnx()
    model, state = build_model_from_checkpoint(checkpoint, cfg, "cpu")
    saved_options = ((state.get("config") or {}).get("model") or {}).get("options") or {}
    reason = random_sampling_reason(saved_options, model, where=f"checkpoint {checkpoint}")
    if reason is not None:
        raise ConfigError(f"cannot export: {reason}")
    normalize = saved_normalize(state, default=cfg.data.normalize if cfg is not None else "imagenet")
    size = tuple(example_size) if example_size is not None else _default_size(state, cfg)
    result = export_onnx(model, path, normalize=normalize, example_size=size, opset=opset)
    if not check:
        return result
    sizes = [size]
    if result.dynamic_size:
        sizes.append((max(1, size[0] * 3 // 4 + 1), max(1, size[1] * 5 // 8 + 3)))  # other, odd-ish sides
    diffs = compare_onnx(path, model, normalize, sizes)
    return OnnxExport(result.path, result.opset, result.example_size, result.static_reason, result.seconds, diffs)
