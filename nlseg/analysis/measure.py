"""One measurement procedure for every op, block and network: time, peak memory, FLOPs.

A *workload* is a function ``workload(device) -> step``: it makes the module and the inputs on ``device``
and returns ``step``, the unit of work (a forward pass, forward + backward, a training step) that runs on
them. :func:`measure` then

* **times** ``step``: ``warmup`` calls, a synchronisation, then the median of ``repeats`` timed calls
  (CUDA is synchronised before each clock stop);
* measures its **peak memory** in one more call under :class:`~nlseg.engine.memory.PeakMemory`: the most
  memory held at once by tensors created inside the call, so inputs and weights made beforehand do not
  count;
* counts its **FLOPs on the META device**: the workload is built again on meta (same shapes, nothing is
  computed) and its step runs under PyTorch's ``FlopCounterMode``, which counts 2 FLOPs per multiply-add,
  convolutions and matrix products only (norms, activations, softmax, pooling and resizing are not
  counted). Counting on meta gives the algorithm's work: while exporting, the non-local op zero-pads the
  narrower of q/k and v for the CPU flash kernel (:mod:`nlseg.ops.attention`), which a count of that run would
  include.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from nlseg.analysis.runinfo import cpu_name
from nlseg.engine.memory import PeakMemory

__all__ = [
    "META",
    "Measurement",
    "ModuleWorkload",
    "Step",
    "Workload",
    "count_flops",
    "count_parameters",
    "describe_run",
    "matmul_gflops",
    "measure",
    "meta_gflops",
    "processor_name",
    ]

Step = Callable[[], object]
"""The unit of work: called with no arguments, on inputs made beforehand."""
Workload = Callable[[torch.device], Step]
"""Makes the module and inputs on a device and returns the step that runs on them."""
META = torch.device("meta")


def _inplace_product_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """``self += a @ b`` for (..., m, k) @ (..., k, n): 2·m·k·n per batch element, as for the out-of-place op."""
    batch = a_shape[0] if len(a_shape) == 3 else 1
    return 2 * batch * a_shape[-2] * a_shape[-1] * b_shape[-1]


def _cpu_flash_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention forward: q kᵀ and P v, 2 FLOPs per multiply-add, as FlopCounterMode counts SDPA on GPU."""
    b, h, nq, d = q_shape
    return 2 * b * h * nq * k_shape[-2] * (d + v_shape[-1])


def _cpu_flash_backward_flops(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """Its backward: q kᵀ recomputed, dV, dP, dQ, dK (five products), as FlopCounterMode counts SDPA on GPU."""
    b, h, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * nq * nk * (3 * d + 2 * dv)


def _fused_conv_flops(x_shape, second, third, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's fused convolution (``nlseg.models.fuse``): ``(X, W, B, ...)`` or, with a sum, ``(X, other, W, B,
    ...)``; the convolution's FLOPs, as for ``aten.convolution`` (the ReLU and the sum are not products)."""
    weight = third if isinstance(third, (tuple, list, torch.Size)) and len(third) == len(x_shape) else second
    return conv_flop_count(x_shape, weight, out_shape, transposed=False)


def _fused_conv_inplace_flops(other_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """Its in-place form ``(other, X, W, B, ...)``, which writes ``conv(X) + other`` into ``other``."""
    return conv_flop_count(x_shape, w_shape, other_shape, transposed=False)


# FlopCounterMode knows the out-of-place products, the ATen convolutions and the GPU attention kernels only; the
# in-place products, PyTorch's CPU flash attention and oneDNN's fused convolutions do the same work as their
# counted relatives.
_INPLACE_PRODUCTS = {
    torch.ops.aten.baddbmm_: _inplace_product_flops,
    torch.ops.aten.addmm_: _inplace_product_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}
if hasattr(torch.ops.mkldnn, "_convolution_pointwise_"):
    _INPLACE_PRODUCTS[torch.ops.mkldnn._convolution_pointwise] = _fused_conv_flops
    _INPLACE_PRODUCTS[torch.ops.mkldnn._convolution_pointwise_] = _fused_conv_inplace_flops


def count_flops(fn: Step) -> float:
    """FLOPs of one call of ``fn`` as PyTorch counts them (2 per multiply-add), in-place products included.

    ``fn`` runs for real on whatever device its tensors are; :func:`meta_gflops` is the count that
    :func:`measure` reports.
    """
    with FlopCounterMode(display=False, custom_mapping=_INPLACE_PRODUCTS) as counter:
        fn()
    return float(counter.get_total_flops())


def meta_gflops(workload: Workload) -> float:
    """GFLOPs of one step of ``workload`` built on the META device (shapes only, nothing computed)."""
    return count_flops(workload(META)) / 1e9


@dataclass(frozen=True)
class Measurement:
    """Result of :func:`measure`. Times in milliseconds, memory in MiB, work in GFLOP (2 per multiply-add)."""

    ms: float
    ms_min: float
    ms_max: float
    peak_mib: float
    gflop: float

    @property
    def gflops_per_s(self) -> float:
        """Achieved GFLOP/s: the meta count over the median time."""
        return self.gflop / (self.ms / 1e3) if self.ms > 0 else float("nan")

    def as_dict(self) -> dict[str, float]:
        """The fields and ``gflops_per_s``, for a JSON record."""
        return asdict(self) | {"gflops_per_s": self.gflops_per_s}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    workload: Workload,
    *,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    flops: bool = True,
) -> Measurement:
    """Time one step of ``workload`` on ``device``, then its peak extra memory, and its FLOPs on meta.

    Args:
        workload: ``workload(device) -> step`` (see the module docstring).
        device: where the step is timed and its memory measured.
        warmup: untimed calls before the timed ones.
        repeats: timed calls; the median is reported with the minimum and maximum.
        memory: measure peak memory (one more call); NaN otherwise.
        flops: count FLOPs on the meta device; NaN otherwise.

    Returns:
        The :class:`Measurement`.
    """
    device = torch.device(device)
    step = workload(device)
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = float("nan")
    if memory:
        with PeakMemory(device) as mem:
            step()
        peak = mem.peak_mib
    gflop = meta_gflops(workload) if flops else float("nan")
    return Measurement(statistics.median(times), min(times), max(times), peak, gflop)


def matmul_gflops(size: int = 4096, *, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Achieved GFLOP/s of a plain float32 ``size x size`` matmul: the machine's yardstick for a run."""

    def workload(dev: torch.device) -> Step:
        a = torch.randn(size, size, device=dev)
        b = torch.randn(size, size, device=dev)
        return lambda: a @ b

    m = measure(workload, device=device, repeats=repeats, memory=False, flops=False)
    return 2 * size**3 / (m.ms / 1e3) / 1e9


def processor_name(device: torch.device | str = "cpu") -> str:
    """The CUDA device's name, else the CPU's model name (:func:`nlseg.analysis.runinfo.cpu_name`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def describe_run(device: torch.device | str, matmul_size: int = 1024) -> tuple[str, float]:
    """One line naming the measuring device and the machine's yardstick now: the GFLOP/s of a plain
    ``matmul_size``² float32 matmul; and that figure. (When, which code, threads and settings are in the run's
    header, :func:`nlseg.analysis.runinfo.run_header`, printed above.)"""
    matmul = matmul_gflops(matmul_size, device=device)
    line = f"Device {device} ({processor_name(device)}); plain {matmul_size}² float32 matmul in this run: {matmul:.0f} GFLOP/s."
    return line, matmul


@dataclass(frozen=True)
class ModuleWorkload:
    """A module and the shapes of its inputs, as a :data:`Workload`.

    The step is ``module.<method>(*inputs)`` (``forward`` by default: calling the module) without autograd,
    or forward + backward of the output's sum. Eval mode in
    both (norms use their running statistics), so that every block runs at batch 1: a norm in train mode
    cannot normalise the 1 x 1 maps of PPM and ASPP for one image.

    Args:
        build: makes the module (called once per device; on meta under ``torch.device("meta")``).
        input_shapes: the shape of each positional input.
        probabilities: positions of inputs that hold class probabilities (a softmax over dim 1).
        backward: forward + backward instead of the forward pass alone.
        method: the module's method to run, when a benchmark measures part of a block (ANN Table 1 measures
            APNB's attention branch without its fusion conv).
    """

    build: Callable[[], nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]
    probabilities: tuple[int, ...] = ()
    backward: bool = False
    method: str = "forward"

    def inputs(self, device: torch.device) -> tuple[Tensor, ...]:
        """Inputs on ``device``: standard normal at a fixed seed (softmax over dim 1 for probabilities)."""
        if device.type == "meta":
            return tuple(torch.empty(shape, device=META) for shape in self.input_shapes)
        gen = torch.Generator().manual_seed(0)
        made = []
        for i, shape in enumerate(self.input_shapes):
            t = torch.randn(shape, generator=gen)
            made.append((t.softmax(1) if i in self.probabilities else t).to(device))
        return tuple(made)

    def module(self, device: torch.device) -> nn.Module:
        """The module on ``device``, in eval mode."""
        if device.type == "meta":
            with torch.device(META):
                return self.build().eval()
        return self.build().to(device).eval()

    def __call__(self, device: torch.device) -> Step:
        module, inputs = self.module(device), self.inputs(device)
        run = module if self.method == "forward" else getattr(module, self.method)
        if not self.backward:

            def forward() -> None:
                with torch.no_grad():
                    run(*inputs)

            return forward

        def forward_backward() -> None:
            module.zero_grad(set_to_none=True)  # gradients are allocated inside the step, as in training
            run(*inputs).sum().backward()

        return forward_backward


def count_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters of the module ``build`` makes, counted on the meta device (nothing is allocated)."""
    with torch.device(META):
        return sum(p.numel() for p in build().parameters())
