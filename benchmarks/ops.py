"""Attention ops, the released (materialised) form against nlseg's, side by side in one run.

    python benchmarks/ops.py [--device cpu|cuda] [--repeats 3] [--json OUT]

The same report as ``nlseg bench ops``; the code lives in :mod:`nlseg.analysis.bench` (``OPS_DOC`` there
says what is measured).
"""
from __future__ import annotations

from nlseg.analysis.bench import main_ops

if __name__ == "__main__":
    main_ops()
