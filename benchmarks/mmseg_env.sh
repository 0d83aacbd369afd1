#!/usr/bin/env bash
# Create the separate virtual environment that benchmarks/vs_mmseg.py runs mmsegmentation in.
#
#   bash benchmarks/mmseg_env.sh [DIR]        (DIR defaults to .venv-mmseg, ignored by git)
#   TORCH_SPEC=torch==2.13.0 bash benchmarks/mmseg_env.sh    (on a CUDA machine: PyPI's CUDA build, for
#                                                             vs_mmseg.py --device cuda)
#
# mmsegmentation is a benchmark-time dependency only: nlseg, its tests and its own venv never import it.
# What goes in, and why:
#   - torch 2.13.0, the CPU build (local version "+cpu"), the same torch as nlseg's venv so both sides of
#     the comparison run the same kernels; the pin keeps pip from pulling a multi-GB CUDA build.
#   - mmengine 0.10.7, mmcv-lite 2.2.0 (mmcv without compiled ops), mmsegmentation 1.2.2, plus ftfy and
#     regex, which mmseg imports at package import.
#   - mmseg 1.2.2 asserts mmcv < 2.2.0 in mmseg/__init__.py; 2.2.0 is the only mmcv-lite for this
#     Python, so the bound is raised to 2.3.0 in the installed copy (a one-line edit of the venv's file).
#   - mmcv-lite has no compiled extension: importing mmcv.ops fails. The heads benchmarked (ANN, NL,
#     DANet, ASPP, PSP) are pure PyTorch, but mmseg's model package imports every head and every
#     backbone; those that need an mmcv.ops name at import are met by a stub module that names them and
#     raises if one is ever called (see STUB below), so no benchmarked path can silently use it.
set -euo pipefail

DIR="${1:-.venv-mmseg}"
PYTHON="${PYTHON:-python3}"

test -x "$DIR/bin/python" || "$PYTHON" -m venv "$DIR"
PIP=("$DIR/bin/python" -m pip install --quiet)

"$DIR/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0+cpu}"
"${PIP[@]}" "mmengine==0.10.7" "mmcv-lite==2.2.0" "mmsegmentation==1.2.2" ftfy regex

SITE="$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# mmseg's version gate: MMCV_MAX = '2.2.0' (exclusive) -> '2.3.0'.
sed -i "s/^MMCV_MAX = '2.2.0'/MMCV_MAX = '2.3.0'/" "$SITE/mmseg/__init__.py"
grep -q "^MMCV_MAX = '2.3.0'" "$SITE/mmseg/__init__.py"

# STUB: mmcv.ops for mmcv-lite. Every name mmseg imports from mmcv.ops at import time becomes a
# callable that raises; the benchmarked models never call one (vs_mmseg.py builds them and runs them).
if ! "$DIR/bin/python" -c "import mmcv.ops" 2>/dev/null; then
    mkdir -p "$SITE/mmcv/ops"
    cat > "$SITE/mmcv/ops/__init__.py" <<'STUB'
"""Stand-in for mmcv.ops in an mmcv-lite install (written by nlseg's benchmarks/mmseg_env.sh).

mmcv-lite ships no compiled operators. mmsegmentation imports some at import time for heads that the
nlseg benchmark never builds; each name here raises if it is used, so a benchmarked model cannot
depend on one unnoticed.
"""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops; mmcv-lite has none")

        def __call__(self, *args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops; mmcv-lite has none")

    _Missing.__name__ = name
    return _Missing
STUB
fi

"$DIR/bin/python" - <<'CHECK'
import mmseg, mmcv, mmengine, torch
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules
register_all_modules()
print(f"mmseg {mmseg.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, torch {torch.__version__}")
CHECK
