"""The authors' released weight files, converted into files nlseg loads (``nlseg convert``).

Three layouts (:mod:`nlseg.engine.released_layouts`), each a key map written from the released code's module names:

- ``ann-backbone``: the ImageNet deep-base ResNet that MendelXu/ANN trains from
  (``3x3resnet101-imagenet.pth``; its stem ``conv1/bn1/conv2/bn2/conv3/bn3``, also accepted under
  ``prefix.``) -> a state dict for ``model.pretrained_backbone`` of a ``stem: deep`` backbone.
- ``ann``: a checkpoint of MendelXu/ANN's ``annn.py`` network (``fs_annn_cityscapes_segohem_latest.pth``:
  ``{"config_dict", "state_dict", "runner_state"}``, the weights under ``module.``) -> an nlseg checkpoint
  of ``ann_r101`` (or ``ann_r50``) with the released backbone (``stem: deep``, ``stem_ceil_mode: true``) and
  ``data.normalize: caffe``.
- ``dnl``: a state dict of maggiesong7/DenoisedNL's ``model.py`` network -> an nlseg checkpoint of
  ``denoised_nl_r101`` (``r50``, ``r18``) without the global-context branch the release lacks.

The mapping is strict: every tensor of the file lands in the model, every tensor of the model comes from
the file, and shapes agree; otherwise nothing is written and one line names the keys (released names)
and both shapes. Three things are not one-to-one, each handled explicitly:

- Aliases. A module registered twice appears twice in a state dict: ANN's APNB uses one conv for key
  and query (``f_query`` is ``f_key``), and the Denoised NL ``interp`` is ``down_sample.downsample``. The
  second copy must equal the first and is dropped.
- Folded biases. Where the released network has a conv bias that nlseg's conv lacks and a BatchNorm
  follows, the bias ``b`` moves into that norm's running mean: ``BN(Wx + b)`` with mean ``mu`` equals
  ``BN(Wx)`` with mean ``mu - b``. This is exact in eval mode; in training the batch mean removes ``b``
  either way, and the running mean keeps tracking ``mu - b``.
- Bookkeeping. BatchNorm's ``num_batches_tracked`` counters are copied where the file has them and set to
  0 where it does not (nlseg's norms use a fixed momentum, so the counter never changes the function);
  the ImageNet classifier ``fc.*`` of the backbone file is dropped. Any other extra key is an error.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nlseg.backbones import create_backbone
from nlseg.config import Config, ConfigError, dataset_num_classes
from nlseg.data import dataset_class
from nlseg.errors import CheckpointError
from nlseg.models import create_model
from nlseg.engine.checkpoint import model_record
from nlseg.engine.released_layouts import FORMATS, LAYOUTS, STAGES, Layout
from nlseg.safeload import RefusedContent, load_weights_only

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "Layout",
    "convert_released",
    "convert_with_layout",
    "converted_config",
    "map_state_dict",
    "read_released",
]

COUNTER = "num_batches_tracked"
LISTED = 6
"""How many keys of each kind an error names before it only counts the rest."""


_SCALAR = np.float64(0).__reduce__()[0]
"""The function numpy pickles a scalar with (``numpy.core.multiarray.scalar`` in numpy 1, ``numpy._core`` in 2),
taken from numpy's public pickling protocol rather than its private modules."""

_NUMPY_SCALARS = [
    (_SCALAR, "numpy.core.multiarray.scalar"),
    (_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")),
]
"""Globals a released checkpoint may hold besides tensors: ANN's ``runner_state`` keeps numpy scores."""


def read_released(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read the state dict of a released file: plain, or under ``state_dict`` / ``model``; ``module.`` removed.

    Loading runs no code (``weights_only``); numpy scalars, which ANN's checkpoints keep next to the
    weights, are allowed.

    Raises:
        CheckpointError: a missing or unreadable file, or one that holds no mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch.save: a zip, or a legacy pickle
        raise CheckpointError(f"{path} cannot be read as a PyTorch file (it is not a torch.save zip or pickle)")
    try:
        content: Any = load_weights_only(path, allowed=_NUMPY_SCALARS)
    except RefusedContent as refused:
        raise CheckpointError(
            f"released file {path} holds Python objects other than tensors, plain values and numpy "
            f"scalars{refused.named()}, which nlseg refuses to load (no code is executed); save its state dict alone "
            "with torch.save(state_dict, FILE)"
        ) from None
    except Exception as err:  # torch.load fails in many ways on a file that is not a torch.save file
        raise CheckpointError(f"{path} cannot be read as a PyTorch file ({type(err).__name__})") from None
    if isinstance(content, Mapping):
        container = next((k for k in ("state_dict", "model") if isinstance(content.get(k), Mapping)), None)
        content = content[container] if container else content
    if not isinstance(content, Mapping) or not content:
        found = f"a dict with keys {', '.join(map(str, list(content)[:6]))}" if isinstance(content, Mapping) \
            else f"a {type(content).__name__}"
        raise CheckpointError(f"{path} holds {found}; expected a state dict (names -> tensors), plain or under "
                              "'state_dict'")
    bad = next(((k, v) for k, v in content.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"{path}: expected a state dict (names -> tensors), found entry {bad[0]!r} of type {type(bad[1]).__name__}"
        )
    if all(key.startswith("module.") for key in content):
        return {key.removeprefix("module."): value for key, value in content.items()}
    return dict(content)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _swap(key: str, pairs: tuple[tuple[str, str], ...], *, reverse: bool = False) -> str | None:
    """``key`` with its longest matching prefix replaced (released -> nlseg, or back with ``reverse``)."""
    matches = [(b, a) if reverse else (a, b) for a, b in pairs if _under(key, b if reverse else a)]
    if not matches:
        return None
    old, new = max(matches, key=lambda pair: len(pair[0]))
    return new + key[len(old):]


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown}, ... and {len(items) - LISTED} more"


def map_state_dict(
    state: Mapping[str, Tensor], layout: Layout, expected: Mapping[str, Tensor], *, source: str, target: str
) -> dict[str, Tensor]:
    """Map a released state dict onto an nlseg module's names, strictly (see the module docstring).

    Args:
        state: the released tensors by released name (``module.`` already removed).
        layout: the key map.
        expected: the nlseg module's state dict (shapes and dtypes; a model on the meta device will do).
        source: the file, for messages.
        target: what is converted into, for messages (``"ann_r101 (19 classes)"``).

    Returns:
        A state dict with exactly ``expected``'s keys; tensors keep the file's dtype (``load_state_dict`` casts).

    Raises:
        CheckpointError: one line naming missing, unexpected and mis-shaped keys (released names, both
            shapes), and aliases that differ from the tensor they should repeat.
    """
    state = dict(state)
    problems: dict[str, list[str]] = {"missing": [], "unexpected": [], "shape": [], "alias": []}

    for alias, original in layout.aliases:
        originals = [k for k in state if _under(k, original)]
        for key in originals:
            copy = alias + key[len(original):]
            if copy not in state:
                problems["missing"].append(copy)
            elif state[copy].shape != state[key].shape or not torch.equal(state[copy], state[key]):
                problems["alias"].append(f"{copy} differs from {key}")
        for key in [k for k in state if _under(k, alias)]:
            if original + key[len(alias):] not in state:
                problems["unexpected"].append(key)
            del state[key]

    for conv, norm in layout.folded_biases:
        bias, mean = state.pop(f"{conv}.bias", None), state.get(f"{norm}.running_mean")
        if bias is None:
            problems["missing"].append(f"{conv}.bias")
        elif mean is not None and bias.shape != mean.shape:
            problems["shape"].append(f"{conv}.bias {tuple(bias.shape)} vs {norm}.running_mean {tuple(mean.shape)}")
        elif mean is not None:
            state[f"{norm}.running_mean"] = mean - bias

    converted: dict[str, Tensor] = {}
    matched: set[str] = set()
    for key, value in state.items():
        if any(_under(key, prefix) for prefix in layout.dropped):
            continue
        name = _swap(key, layout.renames)
        if name is None or name not in expected or name in matched:
            problems["unexpected"].append(key)
            continue
        matched.add(name)
        if value.shape != expected[name].shape:
            problems["shape"].append(f"{key} {tuple(value.shape)} vs {name} {tuple(expected[name].shape)}")
        else:
            converted[name] = value.detach().clone()

    for name, reference in expected.items():
        if name in matched:
            continue
        if name.endswith(COUNTER):
            converted[name] = torch.zeros((), dtype=reference.dtype)
        else:
            problems["missing"].append(_swap(name, layout.renames, reverse=True) or name)

    if any(problems.values()):
        parts = [f"{source} does not fit {target} as the {layout.description}"]
        for kind, title in (("missing", "missing from the file"), ("unexpected", "unexpected in the file"),
                            ("shape", "shape mismatches (file vs model)"), ("alias", "repeated modules that differ")):
            if problems[kind]:
                parts.append(f"{title} ({len(problems[kind])}): {_listed(problems[kind])}")
        raise CheckpointError("; ".join(parts))
    return {name: converted[name] for name in expected}


def converted_config(cfg: Config, layout: Layout) -> Config:
    """The recipe a converted checkpoint records: ``cfg`` with the released network's model options and input
    normalisation (what ``nlseg eval`` and ``predict`` rebuild the model and read images with).

    Raises:
        ConfigError: the recipe's model is not one the layout converts into.
    """
    if cfg.model.name not in layout.models:
        raise ConfigError(
            f"recipe {cfg.name} builds {cfg.model.name!r}; the {layout.name} format converts into "
            f"{', '.join(layout.models)}"
        )
    data = cfg.to_dict()
    data["model"]["options"] = {**data["model"]["options"], **dict(layout.options)}
    if layout.normalize is not None:
        data["data"]["normalize"] = layout.normalize
    return Config.from_dict(data, source=f"recipe {cfg.name} as converted from the {layout.description}")


def _class_names(cfg: Config, num_classes: int) -> list[str]:
    names = cfg.data.options.get("classes") or getattr(dataset_class(cfg.data.dataset), "classes", ())
    return list(names) if len(names) == num_classes else [f"class_{k}" for k in range(num_classes)]


_DEPTHS: dict[tuple[int, ...], str] = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
"""Blocks per stage of the deep-base ResNets torchcv (ANN's framework) builds -> nlseg's backbone."""


def _deep_base_resnet(state: Mapping[str, Tensor], source: str) -> tuple[str, int]:
    """The backbone a deep-base ResNet file is for: its name by the blocks per stage, its width by the stem."""
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"{stage}.")}) for stage, _ in STAGES)
    stem = state.get("conv1.weight", state.get("prefix.conv1.weight"))
    if blocks not in _DEPTHS or stem is None or stem.dim() != 4:
        raise CheckpointError(
            f"{source} is not a deep-base ResNet-50/101/152 file: blocks per stage {blocks} (expected one of "
            f"{', '.join(map(str, _DEPTHS))}) and stem conv1.weight {None if stem is None else tuple(stem.shape)} "
            "(expected (64, 3, 3, 3))"
        )
    return _DEPTHS[blocks], stem.shape[0]


def convert_released(layout_name: str, source: str | os.PathLike[str], cfg: Config | None = None) -> dict[str, Any]:
    """Convert a released file into what nlseg loads.

    Args:
        layout_name: one of :data:`FORMATS`.
        source: the released file.
        cfg: the recipe whose model the checkpoint is for (``ann``, ``dnl``); None for ``ann-backbone``.

    Returns:
        ``ann-backbone``: the state dict of nlseg's ``resnet101(stem="deep")`` backbone (ResNet-50 or -152,
        or a narrower width, where the file's blocks per stage and stem say so). ``ann`` / ``dnl``: a checkpoint as ``nlseg train`` writes its ``best.pt``
        (``model``, ``model_name``, ``num_classes``, ``class_names``, ``config``, ``iteration``, ``best_miou``,
        ``best_iteration``) plus ``converted_from`` (the source file and format).

    Raises:
        CheckpointError: an unreadable file or one that does not fit (see :func:`map_state_dict`).
        ConfigError: an unknown format, a recipe for another model, a recipe whose class count is unknown.
    """
    if layout_name not in LAYOUTS:
        raise ConfigError(f"unknown format {layout_name!r}; expected one of {', '.join(FORMATS)}")
    layout = LAYOUTS[layout_name]
    if not layout.models:
        if cfg is not None:
            raise ConfigError(f"the {layout.name} format converts a backbone file and takes no recipe")
        state = read_released(source)
        name, width = _deep_base_resnet(state, str(source))
        with torch.device("meta"):
            expected = create_backbone(name, stem="deep", width=width).state_dict()
        target = f"nlseg's {name} (stem: deep{'' if width == 64 else f', width {width}'})"
        return map_state_dict(state, layout, expected, source=str(source), target=target)

    if cfg is None:
        raise ConfigError(f"the {layout.name} format needs the recipe of the model it converts into")
    return convert_with_layout(layout, read_released(source), str(source), cfg)


def convert_with_layout(layout: Layout, state: Mapping[str, Tensor], source: str, cfg: Config) -> dict[str, Any]:
    """A released network's state dict (read by :func:`read_released`) -> an nlseg checkpoint of ``cfg``'s model,
    as :func:`convert_released` returns it; shared by every checkpoint format (``ann``, ``dnl``, ``mmseg``)."""
    cfg = converted_config(cfg, layout)
    num_classes = dataset_num_classes(cfg)
    if num_classes is None:
        raise ConfigError(f"recipe {cfg.name}: the number of classes of its {cfg.data.dataset} data set is not "
                          "known before it is read; set data.options.classes")
    with torch.device("meta"):
        expected = create_model(cfg.model.name, num_classes=num_classes, **cfg.model.options).state_dict()
    weights = map_state_dict(
        state, layout, expected, source=str(source), target=f"{cfg.model.name} ({num_classes} classes, recipe {cfg.name})"
    )
    record = model_record(weights, cfg, _class_names(cfg, num_classes))
    return {**record, "converted_from": {"file": str(source), "format": layout.name}}
