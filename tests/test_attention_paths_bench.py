"""benchmarks/attention_paths.py: every path of a shape is measured and agrees on the function, and the
"exp not floored" path leaves the op's floored softmax in place afterwards."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nlseg.ops.attention as attention_module

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("attention_paths", ROOT / "benchmarks" / "attention_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_paths_measures_each_path_and_restores_the_floor(tmp_path, capsys):
    bench, floored = _bench(), attention_module.softmax_numerator_
    assert bench._shape("64:512:64x128:8") == (64, 512, (64, 128), 8.0)
    assert bench._shape("8:32:6x5") == (8, 32, (6, 5), 1.0)
    out = tmp_path / "paths.json"
    assert bench.main(["--shapes", "8:32:6x5:8", "--rows", "7", "--repeats", "1", "--json", str(out)]) == 0
    assert attention_module.softmax_numerator_ is floored
    records = json.loads(out.read_text())
    assert [r["path"] for r in records] == [
        "sdpa (flash, padded when Ck != Cv)", "query blocks, 7 rows",
        f"query blocks, default ({attention_module.BLOCK_ELEMENTS // 30} rows)",
        "query blocks, default, exp not floored"]
    assert all(r["spread"] == 8.0 and r["ms"] > 0 and r["peak_mib"] > 0 for r in records)
    table = capsys.readouterr().out
    assert "| 8 | 32 | 6x5 | 8 | query blocks, default, exp not floored |" in table


def test_plain_exp_is_in_force_only_within():
    bench, floored = _bench(), attention_module.softmax_numerator_
    seen = []
    with bench._plain_exp(True):
        seen.append(attention_module.softmax_numerator_)
    with bench._plain_exp(False):
        seen.append(attention_module.softmax_numerator_)
    assert seen[0] is not floored and seen[1] is floored and attention_module.softmax_numerator_ is floored
