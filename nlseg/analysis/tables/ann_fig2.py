"""ANN Fig. 2: the time of each operation of a non-local block (NB) and of APNB at 256x128, and their sums.

ANN §1 and Fig. 2 time the operations of "a generic non-local block and our APNB" on a 256x128 input (W x H: the
1/8 map of a 2048x1024 Cityscapes image; ``128x256`` here, rows x columns) at C = 2048, Ĉ = 256 (Table 1's
setting), the last bin being the sum. The figure's bars are not in the text; Table 1 gives the totals (NB 179.4 ms,
APNB 30.8 ms on a Titan Xp: 5.8x).

Both blocks are the ones ``nlseg bench blocks`` measures for Table 1: :class:`~nlseg.blocks.APNB` with key and query
sharing one 1x1 conv + BN + ReLU (released), NB being ``APNB(pool_sizes=None)`` (all N keys). The breakdown
covers the whole forward pass, fusion included; the rows up to ``Wo`` are Table 1's unit (:meth:`APNB.attend`).
Both run the plain (reference) attention path, ``fused=False``, which materialises the N x N (NB) or N x S (APNB)
map as the paper's code does: only that path has a Q·Kᵀ, a softmax and a product with V to time apart.

:func:`block_operations` lists the block's own modules and the op's own calls, in the order its forward makes them;
:func:`run_operations` runs them on real tensors, each step reading what the earlier ones wrote. A test checks that
their composition is the block's forward. Each step is timed by :func:`~nlseg.analysis.measure.measure` (warm-up,
repeats, median) on the tensors the earlier steps made, and so is the whole forward; the report prints the sum of
the steps against the whole and their ratio (a step timed alone may find its inputs in cache, or not: the ratio
says how far the breakdown adds up).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nlseg.analysis.measure import count_flops, describe_run, measure
from nlseg.analysis.report import Column, Report, fmt, ratio, size_text, text_column
from nlseg.blocks import APNB
from nlseg.blocks.layers import to_map, to_tokens
from nlseg.ops import pyramid_sample

__all__ = ["BLOCKS", "Operation", "block_operations", "breakdown_table", "plot_breakdown", "run_operations"]

BLOCKS: dict[str, tuple[int, ...] | None] = {"nb": None, "apnb": (1, 3, 6, 8)}
"""The two blocks of Fig. 2 and their pyramid levels (None: all N positions are keys)."""

State = dict[str, Tensor]


@dataclass(frozen=True)
class Operation:
    """One step of a block's forward pass: ``state[out] = fn(*(state[key] for key in inputs))``.

    Attributes:
        name: what the step is (a row of the table).
        kind: the group it is summed into in the figure (``1x1 conv``, ``Q·Kᵀ``, ...).
        inputs: the state keys it reads, in order.
        out: the state key it writes.
        fn: the call itself: a module of the block, or the op's own tensor function.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    out: str
    fn: Callable[..., Tensor]

    def run(self, state: State) -> Tensor:
        """The step on the tensors of ``state``."""
        return self.fn(*(state[key] for key in self.inputs))


KINDS = {nn.Conv2d: "1x1 conv", nn.BatchNorm2d: "BN", nn.ReLU: "ReLU", nn.Dropout2d: "dropout"}


def _module_steps(prefix: str, modules: Sequence[nn.Module], source: str, out: str) -> list[Operation]:
    """One step per module of a conv + norm (+ ReLU) (+ dropout) chain, in order, the last writing ``out``."""
    steps = []
    for i, module in enumerate(modules):
        kind = next((k for cls, k in KINDS.items() if isinstance(module, cls)), type(module).__name__)
        src = source if i == 0 else f"{out}.{i - 1}"
        dst = out if i == len(modules) - 1 else f"{out}.{i}"
        steps.append(Operation(f"{prefix} {kind}", kind, (src,), dst, module))
    return steps


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The leaf modules of a Sequential tree, in order (the ConvNormAct inside the fusion's Sequential)."""
    children = list(module.children())
    return [module] if not children else [leaf for child in children for leaf in _leaves(child)]


def block_operations(block: APNB) -> list[Operation]:
    """The steps of ``block``'s forward with the reference attention path, in order (state key ``x`` is the input).

    Args:
        block: an APNB with shared key and query (released), a plain value conv, average or max pooling (or None).

    Raises:
        ValueError: a variant with other steps (separate query, key/value sharing, random sampling).
    """
    if block.query is not None or block.value is None or block.pool_mode == "random":
        raise ValueError("the breakdown covers APNB with shared key/query, a value conv and avg/max pooling (or none)")
    scale = block.key[0].out_channels ** -0.5 if block.scaled else 1.0
    steps = _module_steps("key/query", list(block.key), "x", "k")
    steps += _module_steps("value", [block.value], "x", "v")
    sizes, mode = block.pool_sizes, block.pool_mode
    if sizes is None:  # all N positions: the (B, C, N) views the reference path flattens to
        keys, values = "k.flat", "v.flat"
        steps.append(Operation("key flatten (view)", "reshape", ("k",), keys, lambda k: k.flatten(2)))
        steps.append(Operation("value flatten (view)", "reshape", ("v",), values, lambda v: v.flatten(2)))
    else:
        keys, values = "k.anchors", "v.anchors"

        def sample(t: Tensor) -> Tensor:
            return pyramid_sample(t, sizes, mode)  # (B, C, S)

        steps.append(Operation(f"key pyramid sampling ({mode})", "pyramid sampling", ("k",), keys, sample))
        steps.append(Operation(f"value pyramid sampling ({mode})", "pyramid sampling", ("v",), values, sample))
    steps += [
        # nonlocal_attention_reference: bmm(q, kᵀ) · scale, softmax over keys, bmm with v
        Operation("Q·Kᵀ (scaled)", "Q·Kᵀ", ("k", keys), "energy",
                  lambda q, k: torch.bmm(to_tokens(q), k) * scale),  # (B, N, Ck) @ (B, Ck, S) -> (B, N, S)
        Operation("softmax", "softmax", ("energy",), "attention", lambda e: torch.softmax(e, dim=-1)),
        Operation("attention · V", "attention · V", ("attention", values), "o.tokens",
                  lambda a, v: torch.bmm(a, v.transpose(1, 2))),  # (B, N, S) @ (B, S, Cv) -> (B, N, Cv)
        Operation("tokens to map", "reshape", ("o.tokens", "x"), "o", lambda o, x: to_map(o, *x.shape[-2:])),
    ]
    steps += _module_steps("Wo", [block.out_proj], "o", "wo")
    steps.append(Operation("concat [Wo(O), x]", "concat", ("wo", "x"), "cat", lambda w, x: torch.cat([w, x], 1)))
    steps += _module_steps("fusion", _leaves(block.fuse), "cat", "out")
    return steps


def run_operations(steps: Sequence[Operation], x: Tensor) -> State:
    """Run ``steps`` in order on input ``x`` without autograd; the state after the last (``out`` is the output)."""
    state: State = {"x": x}
    with torch.no_grad():
        for step in steps:
            state[step.out] = step.run(state)
    return state


def _build(pools: tuple[int, ...] | None, channels: int, key_channels: int) -> APNB:
    block = APNB(channels, key_channels=key_channels, value_channels=key_channels, pool_sizes=pools)
    block.fused = False  # the materialised map: Q·Kᵀ, softmax and · V are separate calls
    return block.eval()


def _step_gflops(pools: tuple[int, ...] | None, channels: int, key_channels: int, size: tuple[int, int]) -> list[float]:
    """GFLOPs of each step, counted on the META device (2 per multiply-add; convs and products only)."""
    with torch.device("meta"):
        block = _build(pools, channels, key_channels)
    state: State = {"x": torch.empty(1, channels, *size, device="meta")}
    gflops = []
    for step in block_operations(block):
        gflops.append(count_flops(lambda step=step: state.__setitem__(step.out, step.run(state))) / 1e9)
    return gflops


def _measure_block(name: str, size: tuple[int, int], channels: int, key_channels: int, device: torch.device,
                   warmup: int, repeats: int, log: Callable[[str], None] | None) -> tuple[list[dict], float]:
    """One record per step of one block at one size, and the whole forward's median ms.

    Each step is timed on the tensors the earlier steps wrote, then run once more to write its own; a tensor no
    later step reads is dropped at once, so at most two N x N maps (NB's energy and softmax) exist together.
    """
    torch.manual_seed(0)
    block = _build(BLOCKS[name], channels, key_channels).to(device)
    x = torch.randn(1, channels, *size, generator=torch.Generator().manual_seed(0)).to(device)
    steps = block_operations(block)
    gflops = _step_gflops(BLOCKS[name], channels, key_channels, size)
    state: State = {"x": x}
    records = []
    with torch.no_grad():
        for i, step in enumerate(steps):
            m = measure(lambda dev, step=step: (lambda: step.run(state)), device=device, warmup=warmup,
                        repeats=repeats, memory=False, flops=False)
            state[step.out] = step.run(state)
            later = {key for s in steps[i + 1:] for key in s.inputs}
            for key in [k for k in state if k not in later and k != "x"]:
                del state[key]
            records.append({"block": name, "size": size_text(size), "step": step.name, "kind": step.kind,
                            "ms": m.ms, "ms_min": m.ms_min, "ms_max": m.ms_max, "gflops": gflops[i]})
            if log:
                log(f"  {name} {size_text(size)} {step.name}: {m.ms:.2f} ms")
        state.clear()  # nothing of the steps is held while the whole forward is timed
        whole = measure(lambda dev: (lambda: block(x)), device=device, warmup=warmup, repeats=repeats,
                        memory=False, flops=False)
    if log:
        log(f"  {name} {size_text(size)} whole forward: {whole.ms:.2f} ms")
    return records, whole.ms


def _row_order(per_block: dict[str, list[dict]]) -> list[str]:
    """Step names of all blocks in forward order: a step one block lacks goes after its predecessor in the other."""
    order: list[str] = []
    for records in per_block.values():
        previous = None
        for name in (r["step"] for r in records):
            if name not in order:
                order.insert(order.index(previous) + 1 if previous else 0, name)
            previous = name
    return order


def breakdown_table(
    sizes: Sequence[tuple[int, int]] = ((128, 256),),
    *,
    channels: int = 2048,
    key_channels: int = 256,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Time each step of NB and APNB (:func:`block_operations`) and their whole forward passes at each size.

    Args:
        sizes: (H, W) feature map sizes; ANN Fig. 2 is (128, 256).
        channels: input channels C (Fig. 2 / Table 1: 2048).
        key_channels: key and value channels Ĉ (256).
        device: where to run.
        warmup: untimed calls before each step's timed ones.
        repeats: timed calls per step; the median is reported.
        log: called with one line per measured step (progress), if given.

    Returns:
        The report: one record per (size, step) with both blocks' ms and GFLOPs, then per size the sum of the steps,
        the whole forward, their ratio and Table 1's unit (the steps through Wo); notes give NB / APNB and the share
        of each kind of step.
    """
    device = torch.device(device)
    header, _ = describe_run(device)
    records: list[dict] = []
    notes: list[str] = []
    for size in sizes:
        per_block, whole = {}, {}
        for name in BLOCKS:
            per_block[name], whole[name] = _measure_block(name, size, channels, key_channels, device, warmup,
                                                          repeats, log)
        by_name = {name: {r["step"]: r for r in recs} for name, recs in per_block.items()}
        for step in _row_order(per_block):
            row: dict = {"size": size_text(size), "step": step, "channels": channels, "key_channels": key_channels}
            for name in BLOCKS:
                r = by_name[name].get(step)
                row["kind"] = row.get("kind") or (r["kind"] if r else None)
                row |= {f"{name}_ms": r["ms"] if r else None, f"{name}_ms_min": r["ms_min"] if r else None,
                        f"{name}_ms_max": r["ms_max"] if r else None, f"{name}_gflops": r["gflops"] if r else None}
            records.append(row)
        sums = {name: sum(r["ms"] for r in recs) for name, recs in per_block.items()}
        unit = {name: sum(r["ms"] for r in recs[: _unit_length(recs)]) for name, recs in per_block.items()}
        gflops = {name: sum(r["gflops"] for r in recs) for name, recs in per_block.items()}
        for label, values, flops in (("sum of the steps", sums, gflops), ("whole forward (one call)", whole, None),
                                     ("Table 1 unit (steps through Wo)", unit, None)):
            records.append({"size": size_text(size), "step": f"**{label}**", "kind": "total",
                            **{f"{n}_ms": values[n] for n in BLOCKS},
                            **{f"{n}_gflops": (flops[n] if flops else None) for n in BLOCKS}})
        records.append({"size": size_text(size), "step": "**sum / whole**", "kind": "check",
                        **{f"{n}_ms": ratio(sums[n], whole[n]) for n in BLOCKS},
                        **{f"{n}_gflops": None for n in BLOCKS}})
        notes.append(_summary(size, per_block, sums, whole, unit))
    columns = (
        text_column("size (HxW)", "size"),
        text_column("step", "step"),
        text_column("kind", "kind"),
        Column("NB ms", "nb_ms", ".2f"),
        Column("APNB ms", "apnb_ms", ".2f"),
        Column("NB / APNB", lambda r: None if r["kind"] == "check" else ratio(r["nb_ms"], r["apnb_ms"]), ".1f", "×"),
        Column("NB GFLOPs", "nb_gflops", ".2f"),
        Column("APNB GFLOPs", "apnb_gflops", ".2f"),
    )
    return Report(records, columns, header=header, notes=tuple(notes))


def _unit_length(records: list[dict]) -> int:
    """How many leading steps make Table 1's unit: everything up to and including Wo."""
    return next(i for i, r in enumerate(records) if r["step"].startswith("Wo ")) + 1


def kind_shares(records: list[dict]) -> dict[str, float]:
    """Percent of the steps' summed time per kind, largest first."""
    total = sum(r["ms"] for r in records)
    shares: dict[str, float] = {}
    for r in records:
        shares[r["kind"]] = shares.get(r["kind"], 0.0) + 100 * r["ms"] / total
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def _summary(size, per_block, sums, whole, unit) -> str:
    parts = [f"At {size_text(size)}: NB / APNB = {fmt(ratio(whole['nb'], whole['apnb']), '.1f')}× (whole forward), "
             f"{fmt(ratio(unit['nb'], unit['apnb']), '.1f')}× (Table 1 unit; paper 179.4 / 30.8 = 5.8×). "
             f"Sum of the steps / whole forward: NB {fmt(ratio(sums['nb'], whole['nb']), '.2f')}, "
             f"APNB {fmt(ratio(sums['apnb'], whole['apnb']), '.2f')}."]
    for name in BLOCKS:
        shares = kind_shares(per_block[name])
        parts.append(f"{name.upper()} time by kind: " + ", ".join(f"{k} {v:.1f}%" for k, v in shares.items() if v >= 0.5)
                     + " (kinds under 0.5% left out).")
    return " ".join(parts)


def plot_breakdown(records: list[dict], out: str | Path) -> Path:
    """A stacked bar per block and size: its steps' time summed by kind (the records of :func:`breakdown_table`).

    ANN Fig. 2 puts each operation's two bars side by side with the sum last; here each block is one bar whose
    segments are the kinds, so the sum is the bar's height (written above it) and the shares can be read off.
    """
    from nlseg.analysis.viz import _matplotlib, _save_figure

    _matplotlib()
    import matplotlib.pyplot as plt

    steps = [r for r in records if r["kind"] not in ("total", "check")]
    bars = [(size, name) for size in dict.fromkeys(r["size"] for r in steps) for name in BLOCKS]
    kinds = list(dict.fromkeys(r["kind"] for r in steps))
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(bars), 4.5))
    colours = plt.get_cmap("tab10")
    bottoms = [0.0] * len(bars)
    for k, kind in enumerate(kinds):
        heights = [sum(r[f"{name}_ms"] or 0.0 for r in steps if r["size"] == size and r["kind"] == kind)
                   for size, name in bars]
        ax.bar(range(len(bars)), heights, bottom=bottoms, label=kind, color=colours(k % 10), width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total:.0f} ms", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(bars)), [f"{name.upper()}\n{size}" for size, name in bars])
    ax.set_ylabel("ms (median per step, summed)")
    ax.set_ylim(0, max(bottoms) * 1.12 if bottoms and max(bottoms) > 0 else 1)
    ax.set_title("Time per operation (ANN Fig. 2 setting)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save_figure(fig, Path(out))
