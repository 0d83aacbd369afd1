"""nlseg against mmsegmentation on the same networks: inference and one training step, time and peak memory.

    bash benchmarks/mmseg_env.sh                       # once: mmsegmentation 1.2.2 in its own venv, .venv-mmseg
    python benchmarks/vs_mmseg.py [--networks ann nl danet aspp psp] [--depths 50 101] [--tasks infer train]
                                  [--levers ...] [--repeats 3] [--compile] [--quick] [--nlseg-only] [--json OUT]

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
- ``--keep-heap``: both sides run with glibc's malloc told to keep freed memory (:data:`KEEP_HEAP`). By default
  each tensor over 32 MiB is a fresh ``mmap``, page-faulted and zeroed by the kernel on every pass (about 1 GiB
  a pass at 512 x 1024), which costs both libraries time, mmseg more (it allocates more per pass).
- ``--device cuda``: both sides on the first GPU (the mmseg venv with a CUDA torch: ``TORCH_SPEC=torch==2.13.0
  bash benchmarks/mmseg_env.sh``); each timed pass ends with ``torch.cuda.synchronize``, and peak memory is the
  CUDA memory allocated during the timed passes above what was allocated before them.

Columns (``infer``): ``with_aux``, ``as_built``, each lever alone on top of ``as_built`` (``fold_bn``,
``channels_last`` (the backbone's; the decoder and heads take contiguous maps), ``bf16``, ``compile`` with
``--compile``), ``exact`` = fold_bn + channels_last (nlseg's defaults), ``exact_cl_heads`` = exact with the decoder
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
import ctypes
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MMSEG_PYTHON = ROOT / ".venv-mmseg" / "bin" / "python"
NUM_CLASSES = 19
AUX_WEIGHT = 0.4  # mmseg's auxiliary FCNHead loss weight, used for nlseg's auxiliary outputs too
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Network:
    """One row family: the nlseg registry name and the mmseg config of the same method, and how they compare."""

    title: str
    nlseg: str  # registry name, {depth} filled in
    mmseg: str  # config path under mmseg's configs/, {depth} filled in
    like_for_like: bool
    note: str


NETWORKS: dict[str, Network] = {
    "ann": Network(
        "ANN", "ann_r{depth}", "ann/ann_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: the ANN paper's network on both sides (AFNB fusing layer3 and layer4 to 2048 channels, "
        "conv3x3 -> 512, APNB, classifier, at 1/8); layer details differ: nlseg's is the released one (classic "
        "stem with ceil-mode pool, layer3 auxiliary head 1024 -> 512, dropout 0.05), mmseg's has a deep stem, a "
        "1024 -> 256 auxiliary head and its own key/query projections",
    ),
    "nl": Network(
        "NL", "nl_head_r{depth}", "nonlocal_net/nonlocal_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: NLHead on layer4 at 1/8 on both sides (conv3x3 -> 512, non-local block with 256 key "
        "channels, conv3x3, concat with layer4, conv3x3 -> 512, classifier), FCN auxiliary head on layer3",
    ),
    "danet": Network(
        "DANet", "danet_head_r{depth}", "danet/danet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: DAHead on layer4 at 1/8 on both sides (PAM and CAM branches, summed, classifier), FCN "
        "auxiliary head on layer3; in training mmseg also runs a classifier and a loss on each branch (two 1x1 "
        "convolutions 512 -> 19), which nlseg's has not",
    ),
    "aspp": Network(
        "ASPP (DeepLabV3)", "aspp_head_r{depth}", "deeplabv3/deeplabv3_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        True,
        "like-for-like: ASPPHead on layer4 at 1/8 on both sides (image pool + 1x1 + dilations 12, 24, 36, "
        "bottleneck conv3x3 -> 512), FCN auxiliary head on layer3",
    ),
    "psp": Network(
        "PSP", "ppm_head_r{depth}", "pspnet/pspnet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", True,
        "like-for-like: PSPHead on layer4 at 1/8 on both sides (bins 1, 2, 3, 6, bottleneck conv3x3 -> 512), "
        "FCN auxiliary head on layer3",
    ),
    # The Denoised NL paper's rows: the same blocks inside its pipeline, against mmseg's heads (not by default).
    "nl-dnl": Network(
        "NL in the DNL pipeline", "nl_r{depth}", "nonlocal_net/nonlocal_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        False,
        "architectural: nlseg = Denoised NL pipeline (reduction to 512 at 1/16, block, x2 upsample, concat with "
        "layer4 and global context, layer2 and layer3 auxiliary heads); mmseg = NLHead at 1/8",
    ),
    "danet-dnl": Network(
        "DANet in the DNL pipeline", "danet_r{depth}", "danet/danet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        False,
        "architectural: nlseg = Denoised NL pipeline with a DANet block at 1/16; mmseg = DAHead at 1/8",
    ),
    "aspp-dnl": Network(
        "ASPP in the DNL pipeline", "aspp_r{depth}",
        "deeplabv3/deeplabv3_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py", False,
        "architectural: nlseg = Denoised NL pipeline with ASPP at 1/16 on 512 channels; mmseg = ASPPHead on "
        "layer4's 2048 channels at 1/8 (dilations 1, 12, 24, 36)",
    ),
    "psp-dnl": Network(
        "PPM in the DNL pipeline", "ppm_r{depth}", "pspnet/pspnet_r{depth}-d8_4xb2-40k_cityscapes-512x1024.py",
        False,
        "architectural: nlseg = Denoised NL pipeline with PPM at 1/16 on 512 channels; mmseg = PSPHead on "
        "layer4's 2048 channels at 1/8",
    ),
}
DEFAULT_NETWORKS: tuple[str, ...] = ("ann", "nl", "danet", "aspp", "psp")
"""The like-for-like rows; the ``*-dnl`` rows (the Denoised NL pipeline's) only when asked for."""

# Inference columns of nlseg: column -> keyword arguments of nlseg.engine.inference.InferenceOptions, or None for the
# model itself in eval mode ("with_aux": forward(x, with_aux=True), every auxiliary head computed as before the
# inference path existed; "as_built": forward(x), only the heads the decoder reads). Each lever alone is on top
# of "as_built"; "exact" is every lever that keeps float32 results exact up to rounding.
INFER_LEVERS: dict[str, dict | None] = {
    "with_aux": None,
    "as_built": None,
    "fold_bn": dict(aux=False, fold_bn=True, channels_last=False, amp="off", compile=False),
    "channels_last": dict(aux=False, fold_bn=False, channels_last=True, amp="off", compile=False),
    "bf16": dict(aux=False, fold_bn=False, channels_last=False, amp="bf16", compile=False),
    "compile": dict(aux=False, fold_bn=False, channels_last=False, amp="off", compile=True),
    "exact": dict(aux=False, fold_bn=True, channels_last=True, amp="off", compile=False),
    "exact_cl_heads": dict(aux=False, fold_bn=True, channels_last=True, channels_last_heads=True, amp="off",
                           compile=False),
    "exact_compile": dict(aux=False, fold_bn=True, channels_last=True, amp="off", compile=True),
}
EXACT = "exact"
TRAIN_LEVERS: tuple[str, ...] = ("as_built", "channels_last", "compile")
SLOW_LEVERS = frozenset({"compile", "exact_compile"})  # only with --compile
MMSEG = "mmseg"


@dataclass(frozen=True)
class Job:
    """One measurement, run in its own process (``--worker`` takes it as JSON)."""

    side: str  # "nlseg" or "mmseg"
    network: str
    depth: int
    task: str  # "infer" or "train"
    lever: str  # a key of INFER_LEVERS / TRAIN_LEVERS, or "mmseg"
    size: tuple[int, int]
    batch: int
    repeats: int
    threads: int
    profile: bool = False
    device: str = "cpu"


@dataclass
class Result:
    times: list[float]
    peak_mib: float
    params_m: float
    gflops: float | None = None
    profile: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Row:
    """One table row: a network at a depth on a task, each column's result (None: failed or not run)."""

    network: str
    depth: int
    task: str
    results: dict[str, Result | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- worker side
# Runs inside the measuring process, with nlseg's or mmseg's Python; imports torch and one library only.


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak_rss() -> int:
    """Return freed heap to the system, reset the resident-set high-water mark; the resident set in KiB."""
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS")


def _nlseg_infer(job: Job, x):
    import torch

    from nlseg.models import create_model

    model = create_model(NETWORKS[job.network].nlseg.format(depth=job.depth), num_classes=NUM_CLASSES)
    model = model.to(x.device).eval()
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_heads."))
    options = INFER_LEVERS[job.lever]
    if options is not None:
        from nlseg.engine.inference import InferenceOptions, prepare_for_inference

        levers = {key: value for key, value in options.items() if key != "channels_last_heads"}
        heads = options.get("channels_last_heads", False)
        model = prepare_for_inference(model, InferenceOptions(**levers), inplace=True, channels_last_heads=heads)
    forward = functools.partial(model, with_aux=True) if job.lever == "with_aux" else model

    def step():
        with torch.no_grad():
            return forward(x)["out"]

    return step, params


def _nlseg_train(job: Job, x, y):
    import torch
    import torch.nn.functional as F

    from nlseg.models import create_model

    model = create_model(NETWORKS[job.network].nlseg.format(depth=job.depth), num_classes=NUM_CLASSES)
    model = model.to(x.device).train()
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_heads."))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if job.lever == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if job.lever == "compile" else model

    def step():
        out = forward(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=IGNORE_INDEX)
        for logits in out["aux"]:
            loss = loss + AUX_WEIGHT * F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, params


def _mmseg_model(job: Job):
    from mmengine.config import Config, ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import mmseg

    register_all_modules()
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    cfg = Config.fromfile(configs / NETWORKS[job.network].mmseg.format(depth=job.depth))
    model_cfg = _no_sync_bn(cfg.model.to_dict())
    model_cfg["pretrained"] = None
    model_cfg["backbone"].pop("init_cfg", None)
    model = MODELS.build(ConfigDict(model_cfg))
    model.init_weights()  # mmseg's own random initialisation (no pretrained file)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head."))
    return model, params


def _no_sync_bn(cfg):
    """The config with every ``SyncBN`` norm as ``BN`` (one process, no process group)."""
    if isinstance(cfg, dict):
        return {k: ("BN" if k == "type" and v == "SyncBN" else _no_sync_bn(v)) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_no_sync_bn(v) for v in cfg)
    return cfg


def _mmseg_infer(job: Job, x):
    import torch

    model, params = _mmseg_model(job)
    model.to(x.device).eval()
    shape = tuple(x.shape[-2:])
    metas = [dict(img_shape=shape, ori_shape=shape, pad_shape=shape, padding_size=[0, 0, 0, 0])] * x.shape[0]

    def step():
        with torch.no_grad():
            return model.inference(x, metas)

    return step, params


def _mmseg_train(job: Job, x, y):
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model, params = _mmseg_model(job)
    model.to(x.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    shape = tuple(x.shape[-2:])
    samples = []
    for labels in y:
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        sample.gt_sem_seg = PixelData(data=labels[None])
        samples.append(sample)

    def step():
        losses = model.loss(x, samples)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, params


def _synchronized(step: Callable[[], object], device) -> Callable[[], object]:
    """``step`` followed by waiting for the GPU, so that a timed pass includes its kernels."""
    import torch

    def run():
        result = step()
        torch.cuda.synchronize(device)
        return result

    return run


def _count_flops(side: str, step: Callable[[], object]) -> float:
    """FLOPs of one ``step()``: nlseg's counter (PyTorch's, plus the in-place products and CPU flash attention
    that nlseg's ops use) on nlseg's side, PyTorch's ``FlopCounterMode`` on mmseg's, whose heads use neither."""
    if side == MMSEG:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())
    from nlseg.analysis.measure import count_flops

    return count_flops(step)


def run_job(job: Job) -> Result:
    """Build the job's model with random weights, warm up, time ``repeats`` passes and take the peak memory."""
    import torch

    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    device = torch.device(job.device)
    x = torch.randn(job.batch, 3, *job.size).to(device)
    if job.task == "infer":
        build = _mmseg_infer if job.side == MMSEG else _nlseg_infer
        step, params = build(job, x)
    else:
        y = torch.randint(0, NUM_CLASSES, (job.batch, *job.size)).to(device)
        build = _mmseg_train if job.side == MMSEG else _nlseg_train
        step, params = build(job, x, y)
    cuda = device.type == "cuda"
    if cuda:  # a timed pass ends when the GPU has finished it
        step = _synchronized(step, device)

    gflops = None
    if job.lever not in ("compile", "exact_compile", "bf16"):
        gflops = _count_flops(job.side, step) / 1e9  # the warm-up pass, counted
    else:
        step()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = _reset_peak_rss()
    times = []
    for _ in range(job.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    else:
        peak_mib = (_status_kib("VmHWM") - baseline) / 1024

    profile = None
    if job.profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        with torch_profile(activities=activities) as prof:
            step()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        profile = prof.key_averages().table(sort_by=sort, row_limit=15)
    return Result(times, peak_mib, params / 1e6, gflops, profile)


# --------------------------------------------------------------------------------------------- driver side


def plan_columns(task: str, levers: Sequence[str], with_mmseg: bool) -> list[str]:
    """The columns measured for ``task``, in the alternating order they run: nlseg as built, mmseg, the rest."""
    known = INFER_LEVERS if task == "infer" else TRAIN_LEVERS
    nlseg = [lever for lever in known if lever in levers]
    head = nlseg[:1] + ([MMSEG] if with_mmseg else [])
    return head + nlseg[1:]


KEEP_HEAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
"""glibc malloc tunables (read at process start) that keep freed memory in the heap for the next allocation:
no ``mmap``/``munmap`` per large tensor, so no page faults re-zeroing it on each pass (``--keep-heap``)."""


def worker_command(job: Job, mmseg_python: Path, keep_heap: bool = False) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that measure ``job`` in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads))
    if keep_heap:
        env.update(KEEP_HEAP)
    if job.side == MMSEG:
        python = str(mmseg_python)
        env.pop("PYTHONPATH", None)  # mmseg's process sees its own venv only
    else:
        python = sys.executable
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    payload = json.dumps(job.__dict__)
    return [python, str(Path(__file__).resolve()), "--worker", payload], env


def measure(job: Job, mmseg_python: Path, timeout: float, keep_heap: bool = False) -> Result:
    """Run ``job`` in its own process; its Result, or RuntimeError with the process's last error line."""
    command, env = worker_command(job, mmseg_python, keep_heap)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return Result(**json.loads(done.stdout.strip().splitlines()[-1]))


def run_table(
    networks: Sequence[str],
    depths: Sequence[int],
    tasks: Sequence[str],
    levers: Sequence[str],
    *,
    with_mmseg: bool,
    infer_size: tuple[int, int],
    train_size: tuple[int, int],
    train_batch: int,
    repeats: int,
    rounds: int,
    threads: int,
    profile: bool,
    mmseg_python: Path,
    device: str = "cpu",
    keep_heap: bool = False,
    timeout: float,
    log: Callable[[str], None],
) -> list[Row]:
    """Measure every (network, depth, task) row's columns, alternating libraries; the rows in order."""
    rows = []
    for network in networks:
        for depth in depths:
            for task in tasks:
                row = Row(network, depth, task)
                columns = plan_columns(task, levers, with_mmseg)
                runs: dict[str, list[Result]] = {column: [] for column in columns}
                for round_index in range(rounds):
                    for column in columns if round_index % 2 == 0 else columns[::-1]:
                        if column in row.errors:
                            continue
                        job = Job(
                            side=MMSEG if column == MMSEG else "nlseg",
                            network=network,
                            depth=depth,
                            task=task,
                            lever=column,
                            size=infer_size if task == "infer" else train_size,
                            batch=1 if task == "infer" else train_batch,
                            repeats=repeats,
                            threads=threads,
                            profile=profile and column in (MMSEG, EXACT, "as_built"),
                            device=device,
                        )
                        try:
                            result = measure(job, mmseg_python, timeout, keep_heap)
                        except RuntimeError as exc:
                            row.errors[column] = str(exc)
                            log(f"{network} R-{depth} {task} {column}: FAILED {exc}")
                            continue
                        runs[column].append(result)
                        log(f"{network} R-{depth} {task} {column}: {result.median:.2f} s, {result.peak_mib:.0f} MiB")
                        if result.profile:
                            log(f"--- profile: {network} R-{depth} {task} {column}\n{result.profile}")
                row.results = {column: _merge(results) for column, results in runs.items()}
                rows.append(row)
    return rows


def _merge(results: list[Result]) -> Result | None:
    """One column's rounds as one Result: all timed passes, the largest peak."""
    if not results:
        return None
    return Result(
        [t for r in results for t in r.times], max(r.peak_mib for r in results), results[0].params_m,
        results[0].gflops,
    )


def best_nlseg(row: Row) -> tuple[str, Result] | None:
    """The exact-levers column if measured, else nlseg as built: what the ratio compares mmseg with."""
    for column in (EXACT, "as_built"):
        if row.results.get(column) is not None:
            return column, row.results[column]
    return None


def format_table(rows: Sequence[Row], device: str = "cpu") -> str:
    """The Markdown tables (one per task), the like-for-like notes and any failures."""
    out = []
    for task, title in (("infer", "Inference"), ("train", "Train step")):
        task_rows = [row for row in rows if row.task == task]
        if not task_rows:
            continue
        columns = [c for c in (*INFER_LEVERS, *TRAIN_LEVERS, MMSEG) if any(c in row.results for row in task_rows)]
        columns = list(dict.fromkeys(columns))
        compiled = any(row.results.get("exact_compile") is not None for row in task_rows)
        head = ["network", *columns, "mmseg / nlseg", *(["mmseg / exact_compile"] if compiled else []),
                "peak MiB nlseg / mmseg", "params M nlseg / mmseg", "GFLOPs nlseg / mmseg"]
        out += [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in task_rows:
            net = NETWORKS[row.network]
            cells = [f"{net.title} R-{row.depth}" + ("" if net.like_for_like else " †")]
            for column in columns:
                result = row.results.get(column)
                cells.append("—" if result is None else f"{result.median:.2f} s")
            best = best_nlseg(row)
            ref = row.results.get(MMSEG)
            if best is None or ref is None:
                cells += ["—"] * (4 + compiled)
            else:
                column, ours = best
                cells.append(f"**{ref.median / ours.median:.2f}×** ({column})")
                if compiled:
                    fast = row.results.get("exact_compile")
                    cells.append("—" if fast is None else f"{ref.median / fast.median:.2f}×")
                cells.append(f"{ours.peak_mib:.0f} / {ref.peak_mib:.0f}")
                cells.append(f"{ours.params_m:.1f} / {ref.params_m:.1f}")
                flops = (ours.gflops, ref.gflops)
                cells.append("—" if None in flops else f"{flops[0]:.0f} / {flops[1]:.0f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    names = list(dict.fromkeys(row.network for row in rows))
    out.append("Rows: " + "; ".join(
        f"**{NETWORKS[n].title}**{'' if NETWORKS[n].like_for_like else ' †'}: {NETWORKS[n].note}" for n in names))
    out.append("")
    out.append(
        "mmseg / nlseg: mmseg's median time over nlseg's (the `exact` column where measured, else as built); "
        "> 1 means nlseg is faster. Peak MiB: "
        + ("CUDA memory allocated during the pass above what the model and its state hold" if device == "cuda"
           else "resident memory the pass adds above the process with its model loaded")
        + "; params without auxiliary heads; GFLOPs of the counted pass (2 per multiply-add): inference's "
        "forward; the train step's forward and backward, auxiliary heads included."
    )
    for row in rows:
        for column, error in row.errors.items():
            out.append(f"- failed: {row.network} R-{row.depth} {row.task} {column}: {error}")
    return "\n".join(out) + "\n"


def rows_to_json(rows: Sequence[Row]) -> list[dict]:
    return [
        {
            "network": row.network,
            "depth": row.depth,
            "task": row.task,
            "results": {
                column: None if r is None else {
                    "times_s": r.times, "median_s": r.median, "peak_mib": r.peak_mib,
                    "params_m": r.params_m, "gflops": r.gflops,
                }
                for column, r in row.results.items()
            },
            "errors": row.errors,
        }
        for row in rows
    ]


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
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: ANN R-50, 64x128 inputs, one repeat, as_built + exact (+ mmseg)")
    parser.add_argument("--nlseg-only", action="store_true", help="measure nlseg only (no mmseg venv needed)")
    parser.add_argument("--mmseg-python", type=Path, default=DEFAULT_MMSEG_PYTHON,
                        help="Python of the mmseg venv (default: .venv-mmseg/bin/python, from mmseg_env.sh)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators of one more pass (as_built, exact, mmseg)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one measuring process may take")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.levers is None:
        args.levers = [lever for lever in all_levers if args.compile or lever not in SLOW_LEVERS]
    if args.quick:
        args.networks, args.depths, args.repeats = ["ann"], [50], 1
        args.infer_size, args.train_size, args.train_batch = (64, 128), (64, 64), 1
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        job["size"] = tuple(job["size"])
        print(json.dumps(run_job(Job(**job)).__dict__))
        return 0
    if not args.nlseg_only and not args.mmseg_python.exists():
        print(f"vs_mmseg: error: no mmseg venv at {args.mmseg_python}; create it with "
              "`bash benchmarks/mmseg_env.sh`, or pass --mmseg-python or --nlseg-only", file=sys.stderr)
        return 2
    if args.device == "cuda" and not _cuda_available():
        print("vs_mmseg: error: --device cuda, but this Python's torch sees no CUDA device", file=sys.stderr)
        return 2
    rows = run_table(
        args.networks, args.depths, args.tasks, args.levers,
        with_mmseg=not args.nlseg_only,
        infer_size=tuple(args.infer_size), train_size=tuple(args.train_size), train_batch=args.train_batch,
        repeats=args.repeats, rounds=args.rounds, threads=args.threads, profile=args.profile,
        mmseg_python=args.mmseg_python, timeout=args.timeout, device=args.device, keep_heap=args.keep_heap,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    heap = ", glibc malloc keeping freed memory (--keep-heap)" if args.keep_heap else ""
    print(
        f"nlseg vs mmsegmentation on {_device_name(args.device, args.threads)}{heap}, median of {args.repeats} x "
        f"{args.rounds}, inference {args.infer_size[0]}x{args.infer_size[1]} batch 1, train step "
        f"{args.train_size[0]}x{args.train_size[1]} batch {args.train_batch}; † = architectures differ (see Rows)\n"
    )
    print(format_table(rows, args.device))
    if args.json is not None:
        args.json.write_text(json.dumps(rows_to_json(rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
