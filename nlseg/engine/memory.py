"""Peak tensor memory of a piece of code, on CPU and on CUDA.

On CUDA the caching allocator already counts: ``torch.cuda.max_memory_allocated``. On CPU PyTorch keeps
no such counter, so :class:`PeakMemory` watches every tensor that an operator creates while it is
active (a ``TorchDispatchMode``), adds its storage's bytes when it appears and subtracts them when the
storage is freed. That counts exactly what PyTorch allocates for tensors — autograd's saved tensors and
the temporaries inside custom autograd functions included — and nothing else (no Python objects, no
allocator slack). Run the backward pass inside the same ``with`` block: the autograd engine runs CPU
work in the calling thread, where the mode is active.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["PeakMemory"]


class _StorageTracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # storage data_ptr -> bytes
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or storage.nbytes() == 0:
                continue  # a view or an in-place result: no new memory
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key)
        return out


class PeakMemory:
    """Context manager measuring the peak of tensor memory allocated inside it, in bytes.

    ``peak_bytes`` is the most memory held at once by tensors created inside the block (tensors that
    existed before it are not counted), so it reads as the "peak extra memory" of the code.

    Example::

        with PeakMemory(device) as mem:
            loss = model(x).sum()
            loss.backward()
        print(mem.peak_mib)
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._tracker: _StorageTracker | None = None
        self._cuda_base = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        else:
            self._tracker = _StorageTracker()
            self._tracker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._cuda_base
        else:
            self._tracker.__exit__(*exc)
            self.peak_bytes = self._tracker.peak
            self._tracker = None

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20
