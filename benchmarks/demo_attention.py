"""Where the demo's Denoised NL block looks from the far discs: the share of each far-disc cell's A'' row (after
Local Retention) that lies within ``--near`` px of the beacon, over the first ``--strips`` validation strips,
against the share a uniform row would give. The README's attention paragraph quotes this script's output.

    python benchmarks/demo_attention.py --checkpoint demo_out/work/demo/last.pt

A disc pixel is far when it lies at least half the data set's cue distance from the beacon's centre (as the
demo's own distance table counts it); each block grid cell holding one counts once.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from nlseg.analysis.attention import attention_maps, capture_block_inputs, find_attention_block
from nlseg.analysis.runinfo import run_header
from nlseg.config import load_config
from nlseg.data.build import build_dataset
from nlseg.data.synthetic import BEACON_A, BEACON_B, DISC_A, DISC_B
from nlseg.engine.build import build_model_from_checkpoint


def near_shares(model, sample, cue_px: float, near_px: float) -> list[tuple[float, float]]:
    """(A'' share near the beacon, uniform share) for every grid cell of the strip that holds a far-disc pixel."""
    label = sample["label"].numpy()
    ys, xs = np.nonzero(np.isin(label, (BEACON_A, BEACON_B)))
    by, bx = ys.mean(), xs.mean()  # the beacon's centre
    block = find_attention_block(model)
    inputs = capture_block_inputs(model, block, sample["image"][None])
    (h, w), (height, width) = inputs.x.shape[-2:], label.shape
    cy, cx = (np.arange(h) + 0.5) * height / h, (np.arange(w) + 0.5) * width / w  # cell centres, px
    near = np.hypot(cy[:, None] - by, cx[None, :] - bx) <= near_px  # (h, w)
    dy, dx = np.nonzero(np.isin(label, (DISC_A, DISC_B)))
    far = np.hypot(dy - by, dx - bx) >= cue_px / 2
    cells = sorted({(int(y * h // height), int(x * w // width)) for y, x in zip(dy[far], dx[far])})
    shares = []
    for cell in cells:
        row = attention_maps(block, inputs, cell)["A'' (LR)"].double().numpy()  # (h, w)
        shares.append((row[near].sum() / row.sum(), near.mean()))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the demo's Denoised NL checkpoint (demo_out/work/demo/last.pt)")
    parser.add_argument("--strips", type=int, default=16, help="validation strips (default 16)")
    parser.add_argument("--near", type=float, default=128.0, help="distance from the beacon's centre, px (default 128)")
    args = parser.parse_args()
    cfg = load_config("demo")
    model, _ = build_model_from_checkpoint(args.checkpoint, cfg)
    dataset = build_dataset(cfg, cfg.data.val_split, train=False)
    cue_px = dataset.cue_distance * max(dataset.size)
    shares = []
    with torch.no_grad():
        for i in range(min(args.strips, len(dataset))):
            shares += near_shares(model, dataset[i], cue_px, args.near)
    attention, uniform = (statistics.mean(s[k] for s in shares) for k in (0, 1))
    print(run_header())
    print()
    print(f"{len(shares)} far-disc cells on {args.strips} validation strips ({'x'.join(map(str, dataset.size))}): "
          f"{100 * attention:.0f}% of the A'' weight within {args.near:.0f} px of the beacon, "
          f"{100 * uniform:.0f}% for uniform attention")


if __name__ == "__main__":
    main()
