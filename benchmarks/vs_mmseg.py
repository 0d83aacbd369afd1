"""nlseg against mmsegmentation on the same networks: inference and one training step, time and peak memory.

    bash benchmarks/mmseg_env.sh                       # once: mmsegmentation 1.2.2 in its own venv, .venv-mmseg
    python benchmarks/vs_mmseg.py [--networks ann nl danet aspp psp] [--depths 50 101] [--tasks infer train]
                                  [--levers ...] [--repeats 3] [--compile] [--quick] [--nlseg-only] [--json OUT]
    python benchmarks/vs_mmseg.py --record [--quick]   # the table of record, what `make bench` puts in the docs

Networks: ANN, NL, DANet, ASPP (DeepLabV3) and PSP with a dilated ResNet-50/101 at output stride 8, 19 classes,
random weights. mmseg's models are built from its own ``configs/<method>/<name>_r{50,101}-d8_4xb2-40k_cityscapes-
512x1024.py`` (the installed package's copy), SyncBN replaced by BN and no pretrained weights; nlseg's are the
registry models of the same architecture: ``ann_r*`` and the heads on layer4 at 1/8, ``nl_head_r*``,
``danet_head_r*``, ``aspp_head_r*`` and ``ppm_head_r*`` (PSP). The ``*-dnl`` rows (not run by default) put the
Denoised NL paper's pipeline models ``nl_r*``, ``danet_r*``, ``aspp_r*``, ``ppm_r*`` against the same mmseg
heads. Which rows are the same architecture on both sides and which differ is printed under the table
(:data:`NETWORKS`).

What is measured, identically on both sides:

- ``infer``: one forward pass of a 1 x 3 x 512 x 1024 image in eval mode under ``torch.no_grad()``, logits
  resized to the input. mmseg runs ``EncoderDecoder.inference`` (decode head only; its auxiliary head is a
  training-time head). nlseg runs the model itself (``with_aux``: every auxiliary head too, as nlseg did before
  its inference path; ``as_built``: ``model(x)`` in eval mode, only the heads the decoder reads) and through
  ``nlseg.engine.inference.prepare_for_inference`` with each lever alone and with the exact levers together.
- ``train``: one training step on a 2 x 3 x 512 x 512 batch with random labels: forward in train mode,
  cross-entropy on the main output plus 0.4 x cross-entropy on each auxiliary output (mmseg: its own
  ``EncoderDecoder.loss``, which is that), backward, ``torch.optim.SGD(lr=0.01, momentum=0.9,
  weight_decay=5e-4)`` step.
- Time: every measurement runs in a fresh process (nlseg with this Python, mmseg with the mmseg venv's), with
  ``torch.set_num_threads(--threads)``; one untimed warm-up pass, then ``--repeats`` timed passes; the median.
  The processes of one network alternate between the two libraries (nlseg's first column, mmseg, nlseg's
  other columns; with ``--rounds 2`` a second round in reverse order), so load from other work on the machine
  hits both sides.
- Peak memory: after the warm-up, freed heap is returned to the system (``malloc_trim``) and the kernel's
  resident-set high-water mark is reset (``/proc/self/clear_refs``); the peak is the high-water mark over the
  timed passes minus the resident set just before them, in MiB: what the pass itself adds to the process
  (activations and workspaces; for ``train`` also the gradients), with the model, and SGD's momentum buffers
  from the warm-up step, already resident.
- GFLOPs and parameters: the warm-up pass (inference: the forward; train: forward and backward, auxiliary
  heads included) counted by PyTorch's ``FlopCounterMode`` (nlseg's side by
  ``nlseg.analysis.measure.count_flops``, which adds the in-place products nlseg's ops use), 2 per
  multiply-add; parameters without the auxiliary heads.
- Allocator: both sides run in the same environment (:func:`vsmmseg.driver.measuring_env`; only ``PYTHONPATH``
  differs), so the same allocator: glibc malloc's defaults unless the caller sets ``MALLOC_*`` or ``LD_PRELOAD``;
  the printed header states it. ``--keep-heap``: both sides with glibc's malloc told to keep freed memory
  (:data:`KEEP_HEAP`). By default each tensor over 32 MiB is a fresh ``mmap``, page-faulted and zeroed by the
  kernel on every pass (about 1 GiB a pass at 512 x 1024), which costs both libraries time, mmseg more.
- Compiled columns (``exact_compile``, train's ``compile``): the warm-up pass is timed; the compile time is that
  pass less a steady one, and inference's per-image time over a run of 100 images counts it once:
  (compile + 100 x t) / 100, next to mmseg's per-image time.
- ``--record`` (the table ``make bench`` writes into docs/efficiency.md): ANN, NL and DANet R-50; inference at
  1 x 3 x 512 x 1024 with ``exact`` (nlseg's default float32 eager path), ``exact_unfused`` and
  ``exact_compile``; one train step at 512 x 512, batch 1, ``as_built`` (eager) and ``compile``; mmseg in both.
- ``--device cuda``: both sides on the first GPU (the mmseg venv with a CUDA torch: ``TORCH_SPEC=torch==2.13.0
  bash benchmarks/mmseg_env.sh``); each timed pass ends with ``torch.cuda.synchronize``, and peak memory is the
  CUDA memory allocated during the timed passes above what was allocated before them.

Columns (``infer``): ``with_aux``, ``as_built``, each lever alone on top of ``as_built`` (``fold_bn``,
``channels_last`` (the backbone's; the decoder and heads take contiguous maps), ``bf16``, ``compile`` with
``--compile``), ``exact`` = fold_bn + channels_last + fuse (nlseg's defaults), ``exact_unfused`` = exact without
fused epilogues (``eval.fuse=false``), ``exact_cl_heads`` = exact with the decoder
and heads channels-last too (``prepare_for_inference(..., channels_last_heads=True)``),
``exact_compile`` = exact + ``torch.compile`` (with ``--compile``; the compile time is not counted), mmseg, and
``mmseg / nlseg`` = mmseg's time over ``exact``'s (> 1: nlseg faster), and over ``exact_compile``'s where measured.
``train``: nlseg ``as_built``,
``channels_last`` (model and batch), ``compile`` with ``--compile``, mmseg. The full default table (5 networks
x 2 depths) takes more than an hour on 2 CPU cores; ``--quick`` is a smoke run (ANN R-50, small inputs, one
repeat, two nlseg columns).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # benchmarks/ holds the packages below; run from any cwd, or loaded by a test
    sys.path.insert(0, str(HERE))

# The parts; the names tests/test_vs_mmseg.py reads from this script are in __all__.
from vsmmseg.driver import KEEP_HEAP, measure, measuring_env, plan_columns, run_table, worker_command  # noqa: E402
from vsmmseg.mmseg_side import no_sync_bn as _no_sync_bn  # noqa: E402
from vsmmseg.networks import (  # noqa: E402
    DEFAULT_NETWORKS, EXACT, INFER_LEVERS, MMSEG, NETWORKS, SLOW_LEVERS, TRAIN_LEVERS,
)
from vsmmseg.records import Job, Result, Row  # noqa: E402
from vsmmseg.table import format_table, rows_to_json  # noqa: E402
from vsmmseg.worker import run_job  # noqa: E402

__all__ = [
    "DEFAULT_NETWORKS", "EXACT", "INFER_LEVERS", "KEEP_HEAP", "MMSEG", "NETWORKS", "TRAIN_LEVERS", "Job", "Result",
    "Row", "_no_sync_bn", "format_table", "main", "measure", "parse_args", "plan_columns", "rows_to_json",
    "run_job", "run_table", "worker_command",
]

ROOT = HERE.parent
RECORD_NETWORKS = ("ann", "nl", "danet")
RECORD_INFER = ("exact_unfused", EXACT, "exact_compile")
"""``--record``'s inference columns: nlseg's default float32 eager path (``nlseg eval``'s defaults) and the same
compiled (``eval.compile``'s ``compile=True``)."""
RECORD_TRAIN = ("as_built", "compile")
"""``--record``'s train step columns: the model eager and under ``torch.compile``."""
DEFAULT_MMSEG_PYTHON = ROOT / ".venv-mmseg" / "bin" / "python"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    all_levers = list(dict.fromkeys((*INFER_LEVERS, *TRAIN_LEVERS)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(DEFAULT_NETWORKS),
                        help=f"networks to measure (default: the like-for-like rows {' '.join(DEFAULT_NETWORKS)})")
    parser.add_argument("--depths", nargs="+", type=int, choices=(50, 101), default=[50, 101],
                        help="ResNet depths (default: 50 101)")
    parser.add_argument("--tasks", nargs="+", choices=("infer", "train"), default=["infer", "train"],
                        help="inference at --infer-size batch 1, and/or one train step at --train-size")
    parser.add_argument("--levers", nargs="+", choices=all_levers, metavar="LEVER",
                        help=f"nlseg columns to measure, of {all_levers} (default: all but compile; "
                             "compile with --compile)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile columns (slow to warm up)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process (median; default 3)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="processes per column, alternating order each round (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both libraries run (cuda: the first GPU; times wait for the GPU; peak memory "
                             "is CUDA memory allocated; the mmseg venv needs a CUDA torch, see mmseg_env.sh)")
    parser.add_argument("--keep-heap", action="store_true",
                        help="run both sides with glibc's malloc keeping freed memory (MALLOC_MMAP_MAX_=0, "
                             "MALLOC_TRIM_THRESHOLD_=2^31-1): no page faults per large tensor")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process (2)")
    parser.add_argument("--infer-size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"),
                        help="inference input size (512 1024)")
    parser.add_argument("--train-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="training crop size (512 512)")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch size (2)")
    parser.add_argument("--record", action="store_true",
                        help="the table of record (make bench): ANN, NL, DANet R-50; inference exact and "
                             "exact_compile, train step as_built and compile at 512x512 batch 1; mmseg")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: ANN R-50, 64x128 inputs, one repeat, as_built + exact (+ mmseg); with "
                             "--record the record's columns at those sizes")
    parser.add_argument("--nlseg-only", action="store_true", help="measure nlseg only (no mmseg venv needed)")
    parser.add_argument("--mmseg-python", type=Path, default=DEFAULT_MMSEG_PYTHON,
                        help="Python of the mmseg venv (default: .venv-mmseg/bin/python, from mmseg_env.sh)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators of one more pass (as_built, exact, mmseg)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one measuring process may take")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.train_levers = None
    if args.levers is None:
        args.levers = [lever for lever in all_levers if args.compile or lever not in SLOW_LEVERS]
    if args.record:
        args.networks, args.depths, args.tasks = list(RECORD_NETWORKS), [50], ["infer", "train"]
        args.levers, args.train_levers = list(RECORD_INFER), list(RECORD_TRAIN)
        args.train_batch = 1
    if args.quick:
        args.networks, args.depths, args.repeats = ["ann"], [50], 1
        args.infer_size, args.train_size, args.train_batch = (64, 128), (64, 64), 1
        if not args.record:
            args.levers = ["as_built", EXACT]
    return args


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_name(device: str, threads: int) -> str:
    """What the table ran on, for its title: the CPU threads, or the GPU's name."""
    if device == "cpu":
        return f"the CPU, {threads} threads"
    import torch

    return f"{torch.cuda.get_device_name(0)} (cuda)"


def _allocator_line(keep_heap: bool) -> str:
    """What the measuring processes' allocator is: the same on both sides."""
    env = measuring_env(1, keep_heap)
    tuned = {name: value for name, value in env.items() if name.startswith("MALLOC_") or name == "LD_PRELOAD"}
    if not tuned:
        return ("Allocator: the same on both sides, glibc malloc with its defaults (no `MALLOC_*` variable, no "
                "`LD_PRELOAD`; the measuring processes never call nlseg's CLI, so nothing tunes malloc).")
    settings = ", ".join(f"`{name}={value}`" for name, value in sorted(tuned.items()))
    how = " (`--keep-heap`)" if keep_heap else ""
    return f"Allocator: the same on both sides, glibc malloc with {settings}{how}."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(run_job(Job.from_json(args.worker)).to_json())
        return 0
    if not args.nlseg_only and not args.mmseg_python.exists():
        print(f"vs_mmseg: error: no mmseg venv at {args.mmseg_python}; create it with "
              "`bash benchmarks/mmseg_env.sh`, or pass --mmseg-python or --nlseg-only", file=sys.stderr)
        return 2
    if args.device == "cuda" and not _cuda_available():
        print("vs_mmseg: error: --device cuda, but this Python's torch sees no CUDA device", file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    rows = run_table(
        args.networks, args.depths, args.tasks, args.levers, train_levers=args.train_levers,
        with_mmseg=not args.nlseg_only,
        infer_size=tuple(args.infer_size), train_size=tuple(args.train_size), train_batch=args.train_batch,
        repeats=args.repeats, rounds=args.rounds, threads=args.threads, profile=args.profile,
        mmseg_python=args.mmseg_python, timeout=args.timeout, device=args.device, keep_heap=args.keep_heap,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    from nlseg.analysis.runinfo import run_header  # here: the measuring processes of mmseg's side have no nlseg

    print(run_header(threads=args.threads, env=measuring_env(args.threads, args.keep_heap), now=started))
    print()
    print(f"{_allocator_line(args.keep_heap)}\n")
    print(
        f"nlseg vs mmsegmentation on {_device_name(args.device, args.threads)}, median of {args.repeats} x "
        f"{args.rounds}, inference {args.infer_size[0]}x{args.infer_size[1]} batch 1, train step "
        f"{args.train_size[0]}x{args.train_size[1]} batch {args.train_batch}; † = architectures differ (see Rows)\n"
    )
    print(format_table(rows, args.device))
    if args.json is not None:
        args.json.write_text(json.dumps(rows_to_json(rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
