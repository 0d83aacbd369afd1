"""The compiled inference path (``eval.compile``: ``auto``, ``on``, ``off``).

``on`` runs the prepared model through ``torch.compile`` with inductor and weight freezing (the weights become
constants of the graph: inductor folds them and, on the CPU, pre-packs the convolution weights for oneDNN);
``off`` runs it eagerly; ``auto`` runs the first image eagerly, times it and compiles only when the rest of the
job pays for the compilation (:func:`worth_compiling`). Freezing is exact here: the prepared model never trains
and its batch norms are already folded (``eval.fold_bn``); logits stay within 1e-4 relative of eager
(``tests/test_compiled_inference.py``).

Every input shape compiles once (``dynamic=False``): a sliding window has one shape, whole images one per image
size and scale; at most :data:`MAX_SHAPES` shapes compile, later ones run eagerly. Compiled code is cached on
disk between runs (:func:`use_persistent_cache`). Without a C++ compiler, or when compiling raises, the model
runs eagerly after one warning line on stderr.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "COMPILE_MODES",
    "CompileGate",
    "compile_seconds",
    "inductor_cache_dir",
    "missing_compiler",
    "use_persistent_cache",
    "worth_compiling",
]

COMPILE_MODES = ("auto", "on", "off")

MAX_SHAPES = 8
"""Input shapes one job compiles at most (dynamo's recompile limit while compiled code runs)."""

EXPECTED_SAVING: dict[str, float] = {"cpu": 0.0, "cuda": 0.10}
"""Fraction of an image's eager time that the compiled path is expected to save, per device type. cpu: measured
(docs/efficiency.md, "Compiled inference"): ANN R-50 at 512x1024 on 2 threads, 3.12 s frozen-compiled against
3.19 s eager in one run and 3.41 s in another, within this machine's noise, so ``auto`` does not compile on a
CPU. cuda: an assumption, not measured by nlseg (no GPU in these sessions)."""

COLD_COMPILE_SECONDS: dict[str, float] = {"cpu": 30.0, "cuda": 60.0}
"""Expected compile time of one input shape with an empty cache: cpu measured (ANN R-50, 28 s on the 2-core
CPU); cuda an assumption (inductor also generates and autotunes triton kernels there)."""

WARM_FRACTION = 0.33
"""Share of the cold compile time that a compile takes when the persistent cache already holds graphs (ANN R-50
on the CPU: 9.0 s against 27.9 s)."""


def worth_compiling(
    remaining_images: int, eager_seconds: float, shapes: int, *, saving: float, compile_seconds: float
) -> bool:
    """Whether ``auto`` compiles: the time the rest of the job saves exceeds the time compiling costs.

    ``remaining_images × eager_seconds × saving > shapes × compile_seconds``: ``eager_seconds`` is the first
    image's eager time (all its views and windows), ``saving`` the fraction of it the compiled path saves, and
    every distinct input shape of the job compiles once.

    Args:
        remaining_images: images the job still has to segment after the timed one.
        eager_seconds: the timed image's eager time.
        shapes: distinct input shapes the model will see (1 for a sliding window; one per image size and scale
            for whole images).
        saving: expected fraction of eager time saved (:data:`EXPECTED_SAVING`).
        compile_seconds: expected compile time of one shape (:func:`compile_seconds`).
    """
    return remaining_images * eager_seconds * saving > shapes * compile_seconds


def inductor_cache_dir() -> Path:
    """Where compiled code persists: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else
    ``$XDG_CACHE_HOME/nlseg/inductor`` (``~/.cache/nlseg/inductor``). Inductor writes its own default (a folder in
    /tmp) into the variable when it first looks: that value counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    mine = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if mine and os.path.abspath(mine) != os.path.abspath(default_cache_dir()):
        return Path(mine)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nlseg" / "inductor"


def use_persistent_cache() -> Path:
    """Point inductor's cache at :func:`inductor_cache_dir` and turn the FX graph cache and the autotune cache on;
    the folder."""
    import torch._inductor.config as inductor_config

    folder = inductor_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return folder


def compile_seconds(device_type: str) -> float:
    """Expected compile time of one input shape: cold, or :data:`WARM_FRACTION` of it when the persistent cache
    already holds FX graphs."""
    cold = COLD_COMPILE_SECONDS.get(device_type, COLD_COMPILE_SECONDS["cpu"])
    graphs = inductor_cache_dir() / "fxgraph"
    warm = graphs.is_dir() and any(graphs.iterdir())
    return cold * WARM_FRACTION if warm else cold


def missing_compiler(device_type: str) -> str | None:
    """What inductor lacks to compile for ``device_type``, or None. On the CPU it needs a C++ compiler, which it
    looks for as ``$CXX`` (else ``g++``) on the PATH (``torch._inductor.cpp_builder.get_cpp_compiler``); on CUDA
    also triton."""
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
    from torch._inductor import config as inductor_config
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001 - InvalidCxxCompiler, or any failure to run it
        tried = [c for c in inductor_config.cpp.cxx if c]
        return f"no C++ compiler (inductor looked for {' or '.join(tried)} on the PATH; set CXX to one)"
    return None


def _say(line: str) -> None:
    """A line on stderr, above a progress bar that may be running (the decision falls in a job's first image)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _warn(text: str) -> None:
    _say(f"nlseg: warning: {text}")


class CompileGate:
    """Runs a prepared model compiled or eagerly, as ``mode`` says (see the module docstring).

    Args:
        model: the prepared model (eval mode, no gradients).
        mode: ``auto``, ``on`` or ``off``.
        backend: the ``torch.compile`` backend; weights are frozen with ``inductor`` only.
        log: where the one line saying which path ran goes (default: stderr).
    """

    def __init__(self, model: nn.Module, mode: str, *, backend: str = "inductor",
                 log: Callable[[str], None] | None = None) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.model, self.mode, self.backend = model, mode, backend
        self.log = log or _say
        self.images: int | None = None
        self.shapes: int | None = None
        self.compiled: Callable | None = None
        self.path: str | None = "eager (compile off)" if mode == "off" else None
        self._timing = False
        self._unsaid = False
        self._eager = False

    def plan(self, images: int, shapes: int | None) -> None:
        """The job ahead: ``images`` images over ``shapes`` distinct input shapes (None: unknown, counted as one
        per image). Without a plan ``auto`` stays eager, silently (a library call such as ``Segmenter.predict``)."""
        self.images, self.shapes = images, shapes

    @contextmanager
    def image(self) -> Iterator[None]:
        """Wraps the forward calls of one image; the first image of an ``auto`` job runs eagerly, timed, and
        decides the path."""
        if self.path is not None or self.mode != "auto" or self._eager:
            yield
            return
        if self.images is None:
            self._decide("eager (compile auto: the job's size is unknown)", say=False)  # a library call, not a job
            yield
            return
        self._timing = True
        start = time.perf_counter()
        try:
            yield
        finally:
            self._timing = False
        self._decide_auto(time.perf_counter() - start)

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Forward calls that run eagerly and decide nothing (a memory probe: compiled code's buffers bypass the
        dispatcher that measures them, and its sizes are not the job's)."""
        self._eager = True
        try:
            yield
        finally:
            self._eager = False

    def _decide_auto(self, seconds: float) -> None:
        device_type = _device_type(self.model)
        remaining = max(self.images - 1, 0)
        shapes = self.shapes if self.shapes is not None else max(self.images, 1)
        saving = EXPECTED_SAVING.get(device_type, 0.0)
        cost = compile_seconds(device_type)
        why = (f"{remaining} image(s) left x {seconds:.2f} s x {saving:.0%} expected saving vs {shapes} shape(s) x "
               f"~{cost:.0f} s compile")
        if worth_compiling(remaining, seconds, shapes, saving=saving, compile_seconds=cost):
            self._start_compiling(f"compile auto: {why}")
        else:
            self._decide(f"eager (compile auto: {why})")

    def _decide(self, path: str, *, say: bool = True) -> None:
        self.path = path
        if say:
            self.log(f"inference path: {path}")

    def _start_compiling(self, why: str) -> None:
        device_type = _device_type(self.model)
        options = None
        if self.backend == "inductor":
            use_persistent_cache()  # before inductor first looks for its folder (finding the compiler does)
            options = {"freezing": True}
        missing = missing_compiler(device_type) if self.backend == "inductor" else None
        if missing:
            _warn(f"compiled inference is not possible here: {missing}; running eagerly")  # the one line
            self._decide(f"eager ({missing})", say=False)
            return
        self.compiled = torch.compile(self.model, backend=self.backend, dynamic=False, options=options)
        frozen = ", frozen weights" if options else ""
        self._decide(f"compiled ({self.backend}{frozen}; {why})", say=False)  # said once the first call compiled
        self._unsaid = True

    def __call__(self, *args, **kwargs):
        if self._eager:
            return self.model(*args, **kwargs)
        if self.path is None and self.mode == "on":
            self._start_compiling("compile on")
        if self.compiled is None or self._timing:
            return self.model(*args, **kwargs)
        try:
            with torch._dynamo.config.patch(recompile_limit=MAX_SHAPES):  # a new shape past it runs eagerly
                result = self.compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise  # the image, not the compiler (nlseg predict skips it and goes on)
        except Exception as err:  # noqa: BLE001 - any compile failure: fall back, say so in one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            _warn(f"compiling the model failed ({type(err).__name__}: {first[:200]}); running eagerly")
            self.compiled = None
            self._decide(f"eager (compiling failed: {type(err).__name__})", say=False)
            return self.model(*args, **kwargs)
        if self._unsaid:
            self._unsaid = False
            self.log(f"inference path: {self.path}")
        return result


def _device_type(model: nn.Module) -> str:
    first = next(model.parameters(), None)
    return first.device.type if first is not None else "cpu"
