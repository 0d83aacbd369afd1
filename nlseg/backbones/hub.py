"""Backbone weights by name: a small table of published ImageNet files, fetched once into PyTorch's cache.

``model.pretrained_backbone`` (and ``pretrained_backbone=`` of ``nlseg.create_model``) takes a local file
or a name of :data:`WEIGHTS` (``nlseg list weights``). A name is looked up in the cache torch.hub uses,
``$TORCH_HOME/hub/checkpoints`` (:func:`cache_dir`), under the publisher's file name; a file missing there
is downloaded once:

1. under a lock file beside it (``NAME.lock``, ``fcntl.flock``): a second process that asks for the same
   file waits, then finds it in place and downloads nothing;
2. into a temporary file in the same folder, with a progress bar on a terminal;
3. its SHA-256 checked against the table (the full digest, or the prefix the publisher's file name
   carries, as torch.hub checks it); then ``os.replace`` puts it in place in one step.

Whatever goes wrong (no connection, a transfer cut short, a checksum mismatch) deletes the temporary
file and raises :class:`nlseg.errors.DownloadError` with one line: the cache never holds a partial or
unverified file under the final name. Offline (``NLSEG_OFFLINE=1``, or Hugging Face's ``HF_HUB_OFFLINE=1``)
no connection is opened; a missing file is an error naming the file to place and the folder.
``NLSEG_WEIGHTS_URL`` (or ``base_url=``) replaces the publisher's folder in every URL (a mirror, a test
server); the file name stays the publisher's.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nlseg import registry
from nlseg.errors import DownloadError
from nlseg.registry import Registry

__all__ = [
    "OFFLINE_VARIABLES",
    "URL_VARIABLE",
    "WEIGHTS",
    "WeightsEntry",
    "cache_dir",
    "cached_file",
    "close_names",
    "fetch_weights",
    "is_offline",
    "list_weights",
    "missing_offline",
    "resolve_weights",
    "weights_entry",
]

URL_VARIABLE = "NLSEG_WEIGHTS_URL"
"""Environment variable: a base URL that replaces the publisher's folder (``BASE/<file name>``)."""
OFFLINE_VARIABLES: tuple[str, ...] = ("NLSEG_OFFLINE", "HF_HUB_OFFLINE")
"""Environment variables that, set to 1 / true / yes / on, forbid any download."""
CHUNK = 1 << 20
TIMEOUT_S = 60.0
"""Seconds a connection may stay silent before the download fails."""


@dataclass(frozen=True)
class WeightsEntry:
    """One published weights file that fits an nlseg backbone.

    Args:
        name: the name users write (``--set model.pretrained_backbone=NAME``).
        url: where its publisher serves it; the last path segment is the cached file's name.
        sha256: the full hex digest where the publisher lists one, else the prefix its file name carries.
        backbone: the :func:`nlseg.backbones.create_backbone` name it fits (``resnet50``).
        stem: the ``stem`` option it fits (``classic``, ``deep``, ``v1c``).
        license: the licence the publisher states for the file.
        source: where the URL and checksum were read.
        size_mib: the file's size in MiB as the publisher states it, or None when not stated.
        renames: ``(old prefix, new prefix)`` pairs that turn the file's key names into nlseg's, first
            match wins; empty when the file uses nlseg's names.
    """

    name: str
    url: str
    sha256: str
    backbone: str
    stem: str
    license: str
    source: str
    size_mib: float | None = None
    renames: tuple[tuple[str, str], ...] = ()

    def offline_error(self) -> str | None:
        """One line when downloading is forbidden (offline) and the file is not cached, else None."""
        return missing_offline(self.name)

    @property
    def filename(self) -> str:
        """The publisher's file name, under which the file is cached."""
        return self.url.rsplit("/", 1)[-1]


_TORCHVISION = "torchvision.models.resnet, ResNet{}_Weights.IMAGENET1K_V1 (pytorch/vision)"
_GLUON = "timm, gluon_resnet.py default_cfgs 'gluon_resnet{}' = resnet{}.gluon_in1k (huggingface/pytorch-image-models)"
_OPENMMLAB = ("mmcv, mmcv/model_zoo/open_mmlab.json 'resnet{}_v1c' (open-mmlab/mmcv; mmsegmentation's "
              "open-mmlab://resnet{}_v1c)")
_MMCV_STEM = (("stem.7.", "bn1."), ("stem.", "conv1."))
"""mmcv's ResNetV1c keeps its deep stem in ``stem`` (conv, BN, ReLU three times: 0/1, 3/4, 6/7); nlseg names
the three convolutions and first two norms ``conv1.0 .. conv1.6`` and the last norm ``bn1``."""


def _entries(*entries: WeightsEntry) -> Registry[WeightsEntry]:
    """The package's weights registry (:data:`nlseg.registry.WEIGHTS`) with ``entries`` registered."""
    for entry in entries:
        registry.WEIGHTS.register(entry.name, entry)
    return registry.WEIGHTS


WEIGHTS: Registry[WeightsEntry] = _entries(
    # classic 7x7 stem: torchvision's ImageNet ResNets (BSD-3-Clause, torchvision's licence)
    WeightsEntry("torchvision-resnet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd",
                 "resnet18", "classic", "BSD-3-Clause", _TORCHVISION.format(18), 44.661),
    WeightsEntry("torchvision-resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61",
                 "resnet50", "classic", "BSD-3-Clause", _TORCHVISION.format(50), 97.781),
    WeightsEntry("torchvision-resnet101", "https://download.pytorch.org/models/resnet101-63fe2227.pth", "63fe2227",
                 "resnet101", "classic", "BSD-3-Clause", _TORCHVISION.format(101), 170.511),
    # deep stem 3->64->64->128: Gluon's ResNet-v1s, ported by timm under nlseg's key names (Apache-2.0)
    WeightsEntry("gluon-resnet50-v1s",
                 "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download/v0.1/"
                 "gluon_resnet50_v1s-1762acc0.pth", "1762acc0",
                 "resnet50", "deep", "Apache-2.0", _GLUON.format("50_v1s", "50s")),
    WeightsEntry("gluon-resnet101-v1s",
                 "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download/v0.1/"
                 "gluon_resnet101_v1s-60fe0cc1.pth", "60fe0cc1",
                 "resnet101", "deep", "Apache-2.0", _GLUON.format("101_v1s", "101s")),
    # v1c stem 3->32->32->64: Gluon's ResNet-v1c (timm, nlseg's names) and mmcv's, which mmsegmentation uses
    WeightsEntry("gluon-resnet50-v1c",
                 "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download/v0.1/"
                 "gluon_resnet50_v1c-48092f55.pth", "48092f55",
                 "resnet50", "v1c", "Apache-2.0", _GLUON.format("50_v1c", "50c")),
    WeightsEntry("gluon-resnet101-v1c",
                 "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download/v0.1/"
                 "gluon_resnet101_v1c-1f26822a.pth", "1f26822a",
                 "resnet101", "v1c", "Apache-2.0", _GLUON.format("101_v1c", "101c")),
    WeightsEntry("openmmlab-resnet50-v1c",
                 "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth", "2cccc1ad",
                 "resnet50", "v1c", "Apache-2.0", _OPENMMLAB.format(50, 50), renames=_MMCV_STEM),
    WeightsEntry("openmmlab-resnet101-v1c",
                 "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth", "e67eebb6",
                 "resnet101", "v1c", "Apache-2.0", _OPENMMLAB.format(101, 101), renames=_MMCV_STEM),
)
"""The weights nlseg fetches by name. None of these publishers lists a full SHA-256: each entry checks the
prefix its file name carries, as ``torch.hub.load_state_dict_from_url(check_hash=True)`` does."""


def list_weights() -> list[str]:
    """The names of :data:`WEIGHTS`, in table order (by stem, then depth)."""
    return list(WEIGHTS)


def close_names(value: str, n: int = 3) -> list[str]:
    """Names of :data:`WEIGHTS` that look like ``value`` (for error messages)."""
    return WEIGHTS.close(value, n)


def weights_entry(name: str) -> WeightsEntry:
    """The table entry called ``name``.

    Raises:
        KeyError: no such name; the message lists the close names and says where the table is listed.
    """
    if name not in WEIGHTS:
        close = close_names(name)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise KeyError(f"unknown weights name {name!r}; {hint}nlseg list weights lists the {len(WEIGHTS)} names")
    return WEIGHTS[name]


def cache_dir() -> Path:
    """The folder torch.hub caches weights in: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/...``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(name: str) -> Path:
    """Where the weights called ``name`` live in the cache (whether or not they are there yet)."""
    return cache_dir() / weights_entry(name).filename


def is_offline() -> bool:
    """Whether an environment variable of :data:`OFFLINE_VARIABLES` forbids downloads."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def missing_offline(name: str) -> str | None:
    """The one-line error for weights ``name`` when offline and not cached, else None."""
    if not is_offline():
        return None
    entry, path = weights_entry(name), cached_file(name)
    if path.is_file():
        return None
    flag = next(v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on"))
    return (f"weights {name!r} are not in the cache and {flag}={os.environ[flag]} forbids downloading: place "
            f"{entry.filename} (from {entry.url}) in {path.parent}")


def _url(entry: WeightsEntry, base_url: str | None) -> str:
    base = base_url if base_url is not None else os.environ.get(URL_VARIABLE) or None
    return entry.url if base is None else f"{base.rstrip('/')}/{entry.filename}"


def fetch_weights(name: str, *, base_url: str | None = None, progress: bool = True) -> Path:
    """The cached file of the weights called ``name``, downloaded and verified first if it is not there.

    Args:
        name: a name of :data:`WEIGHTS`.
        base_url: replaces the publisher's folder (default: ``$NLSEG_WEIGHTS_URL``, else the publisher's URL).
        progress: show a progress bar (only on a terminal).

    Raises:
        KeyError: unknown name.
        DownloadError: offline and not cached, no connection, a transfer cut short, or a checksum mismatch.
    """
    entry = weights_entry(name)
    target = cache_dir() / entry.filename
    if target.is_file():
        return target
    refused = missing_offline(name)
    if refused:
        raise DownloadError(refused)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"weights {name!r}: cannot create the cache folder {target.parent} "
                            f"({err.strerror or err})") from None
    with _locked(target) as exclusive:
        if target.is_file():  # another process finished it while this one waited
            return target
        if exclusive:
            _remove_leftovers(target)
        _download(entry, _url(entry, base_url), target, progress)
    return target


def _remove_leftovers(target: Path) -> None:
    """Delete the partial files of downloads of ``target`` that were killed (SIGKILL, power loss) before they
    could clean up. Only under the lock: no other process can be writing one then."""
    for part in target.parent.glob(f".{target.name}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``TARGET.lock`` (kept on disk: removing it would race with a waiter); yields
    whether the lock is exclusive (not on a system without POSIX locks)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): the temporary name and os.replace still keep it whole
        yield False
        return
    lock = target.with_name(target.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise DownloadError(f"cannot create the lock file {lock} ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _download(entry: WeightsEntry, url: str, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    print(f"downloading {entry.name} from {url} to {target}", file=sys.stderr)
    fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest, received, total = hashlib.sha256(), 0, None
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    total = response.length
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                              file=sys.stderr, disable=None if progress else True, leave=False) as bar:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except http.client.IncompleteRead as err:
                received += len(err.partial)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                reason = getattr(err, "reason", None) or err
                raise DownloadError(f"downloading weights {entry.name!r} from {url} failed ({reason}); "
                                    f"nothing was saved in {target.parent}") from None
        if total is not None and received != total:
            raise DownloadError(f"downloading weights {entry.name!r} from {url} was cut short after {received} of "
                                f"{total} bytes; nothing was saved in {target.parent}")
        found = digest.hexdigest()
        if not found.startswith(entry.sha256.lower()):
            raise DownloadError(f"checksum mismatch for weights {entry.name!r} from {url}: expected sha256 "
                                f"{entry.sha256}..., got {found}; the download was deleted")
        os.replace(part, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


def resolve_weights(source: str | os.PathLike[str]) -> tuple[Path, tuple[tuple[str, str], ...]]:
    """A weights file for ``source`` and the key renames it needs.

    An existing file is used as it is (a local path always wins over a name); a name of :data:`WEIGHTS` is
    fetched into the cache (:func:`fetch_weights`).

    Raises:
        FileNotFoundError: neither an existing file nor a known name (the message lists close names).
        DownloadError: see :func:`fetch_weights`.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path, ()
    name = os.fspath(source)
    if name in WEIGHTS:
        return fetch_weights(name), WEIGHTS[name].renames
    close = close_names(name)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise FileNotFoundError(f"weights file {path} does not exist and {name!r} is no weights name{hint}; "
                            "nlseg list weights lists the names")
