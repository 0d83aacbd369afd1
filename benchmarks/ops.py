"""Attention ops, the released (materialised) form against nlseg's, side by side in one run (README's `ops` block).

    python benchmarks/ops.py [--device cpu|cuda] [--repeats 3] [--json OUT]

The same report as ``nlseg bench ops`` (whose ``--help`` lists every flag); what is measured is described in
:mod:`nlseg.analysis.tables.ops`.
"""
from __future__ import annotations

import sys

from nlseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ops", *sys.argv[1:]]))
