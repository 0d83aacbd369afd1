"""A recipe's training speed: the data loader alone, the training step alone and the full loop, per speed switch.

    python benchmarks/train_speed.py RECIPE [--set KEY=VALUE ...] [--levers as_built,channels_last,compile,bf16,all]
                                     [--steps 2] [--repeats 3] [--device cpu|cuda] [--threads N] [--json OUT]

The same report as ``nlseg bench train`` (whose ``--help`` lists every flag); what is measured is described in
:mod:`nlseg.analysis.tables.train_speed`.
"""
from __future__ import annotations

import sys

from nlseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
