"""nlseg bench: FLOP counts against closed forms and the papers' figures, the measured units, the JSON records."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from nlseg.analysis.bench import (
    ANN_TABLE1,
    TABLE_V,
    AnnTable1Unit,
    ReleasedDenoisedNL,
    _block_cases,
    _meta_gflops,
    _table5_cases,
    bench_ops,
    main_bench,
)
from nlseg.blocks import APNB, DenoisedNL

S = 1 + 9 + 36 + 64  # APNB's anchors, pool sizes (1, 3, 6, 8)


def block_args(**overrides) -> argparse.Namespace:
    defaults = dict(channels=2048, key_channels=256, low_channels=1024, whole=False, lean_only=False)
    return argparse.Namespace(**(defaults | overrides))


# Closed forms, in multiply-adds (FlopCounterMode counts 2 FLOPs per multiply-add, convs and products only).
def nb_unit_macs(n: int, c: int, ck: int) -> int:
    """Key (= query) conv C -> Ĉ, value conv C -> Ĉ, Wo Ĉ -> C, then q kᵀ (N x Ĉ x N) and A v (N x N x Ĉ)."""
    return 3 * n * c * ck + 2 * n * n * ck


def apnb_unit_macs(n: int, c: int, ck: int) -> int:
    """The same convs; the products against S anchors: q P(k)ᵀ (N x Ĉ x S) and A P(v) (N x S x Ĉ)."""
    return 3 * n * c * ck + 2 * n * S * ck


def fusion_macs(n: int, c: int) -> int:
    """The 1x1 fusion conv on cat(Wo(O), x): 2C -> C."""
    return n * 2 * c * c


@pytest.mark.parametrize("size", [(96, 96), (128, 256)])
def test_table1_flops_match_closed_forms_and_the_paper(size):
    n, (c, ck) = size[0] * size[1], (2048, 256)
    nb = _meta_gflops(_block_cases("nl", size, block_args())[-1][0], backward=False)
    apnb = _meta_gflops(_block_cases("apnb", size, block_args())[0][0], backward=False)
    assert nb * 1e9 == 2 * nb_unit_macs(n, c, ck)
    assert apnb * 1e9 == 2 * apnb_unit_macs(n, c, ck)
    # ANN Table 1's "GFLOPs" are these multiply-adds plus what its torchstat count adds: a conv bias per output
    # (key, value: Ĉ; Wo: C), BN 2 and ReLU 1 per element of the key map: N (5 Ĉ + C). NB: 58.0 and 601.4.
    assert round((nb / 2 * 1e9 + n * (5 * ck + c)) / 1e9, 1) == ANN_TABLE1[("nl", size)][0]
    if size == (96, 96):  # APNB: 15.0 against the paper's 15.5 (its 256x128 figure, 43.5, is below 3 N C Ĉ alone)
        assert apnb / 2 == pytest.approx(ANN_TABLE1[("apnb", size)][0], rel=0.04)


def test_whole_blocks_add_the_fusion_conv():
    size, n, c, ck = (24, 32), 24 * 32, 64, 16
    args = block_args(channels=c, key_channels=ck, whole=True)
    nl = _meta_gflops(_block_cases("nl", size, args)[0][0], backward=False)  # NonLocal2d: separate θ, φ
    apnb = _meta_gflops(_block_cases("apnb", size, args)[0][0], backward=False)
    assert nl * 1e9 == 2 * (n * c * ck + nb_unit_macs(n, c, ck) + fusion_macs(n, c))
    assert apnb * 1e9 == 2 * (apnb_unit_macs(n, c, ck) + fusion_macs(n, c))


def test_table1_unit_is_the_blocks_attention_branch():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    for pools in [None, (1, 3, 6, 8)]:
        block = APNB(16, key_channels=4, value_channels=4, pool_sizes=pools).double().eval()
        torch.nn.init.normal_(block.out_proj.weight)  # Wo starts at zero; make it show
        unit, released = AnnTable1Unit(block), AnnTable1Unit(block, released=True)
        with torch.no_grad():
            context = unit(x)
            torch.testing.assert_close(block.fuse(torch.cat([context, x], 1)), block(x))  # the rest of the block
            torch.testing.assert_close(released(x), context)
        fusion = sum(p.numel() for p in block.fuse.parameters())
        assert sum(p.numel() for p in unit.parameters()) == sum(p.numel() for p in block.parameters()) - fusion


def test_released_denoised_nl_is_the_same_function():
    torch.manual_seed(0)
    block = DenoisedNL(8, key_channels=4).double()
    torch.nn.init.constant_(block.gamma, 0.7)
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    probs = torch.randn(1, 3, 6, 5, dtype=torch.float64).softmax(1)
    torch.testing.assert_close(ReleasedDenoisedNL(block)(x, probs), block(x, probs))


def test_table5_flops_are_the_papers_deltas():
    """At 768x768 (block input 512 x 48 x 48) the blocks add what Table V says, to the printed digits."""
    flops = {(row, form): _meta_gflops(case, backward=False) for row, form, _, case in _table5_cases((48, 48))}
    for row in ("+NL", "+DANet", "+Denoised NL"):
        assert round(flops[(row, "nlseg")], 2) == TABLE_V[row][0]
    assert flops[("+Denoised NL", "released")] == flops[("+Denoised NL", "nlseg")]
    # CCNet: our block makes R = 2 passes, the paper's figure is one (1.76 against 1.77); DRANet*: 0.73 against 0.76
    assert flops[("+CCNet", "nlseg")] / 2 == pytest.approx(TABLE_V["+CCNet"][0], abs=0.01)
    assert flops[("+DRANet*", "nlseg")] == pytest.approx(TABLE_V["+DRANet*"][0], abs=0.04)


BLOCK_KEYS = {
    "block": str, "measured": str, "size": str, "channels": int, "key_channels": int, "pass": str, "device": str,
    "gflops": float, "gmacs": float, "params": int, "peak_mem_mib": float, "ms": float, "ms_min": float,
    "ms_max": float,
}


def test_bench_blocks_json_records(tmp_path, capsys):
    out = tmp_path / "blocks.json"
    argv = ["--blocks", "nl,apnb,afnb,denoised_nl", "--sizes", "8x8,6x10", "--channels", "32", "--key-channels", "8",
            "--low-channels", "16", "--repeats", "1", "--json", str(out)]
    main_bench("blocks", argv)
    records = json.loads(out.read_text())
    assert [(r["block"], r["size"]) for r in records] == [
        (b, s) for s in ("8x8", "6x10") for b in ("nl", "nl", "apnb", "afnb", "denoised_nl")
    ]
    for r in records:
        for key, kind in BLOCK_KEYS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["gflops"] > 0 and r["params"] > 0 and r["peak_mem_mib"] > 0 and r["ms"] > 0
        assert r["paper_gflops"] is None  # not ANN Table 1's setting
    materialised, flash = records[0], records[1]  # NB as the paper measured it, and with nlseg's kernel
    assert materialised["measured"] == "ANN Table 1 unit, materialised (as the paper)"
    assert flash["measured"] == "ANN Table 1 unit, nlseg flash attention"
    for nb in (materialised, flash):
        assert nb["gflops"] * 1e9 == 2 * nb_unit_macs(64, 32, 8)
    printed = capsys.readouterr().out
    assert "| nl | ANN Table 1 unit, materialised (as the paper) | 8x8 | fwd |" in printed
    assert "NL (ANN Table 1 unit, materialised (as the paper)) / APNB at 6x10 (fwd): GFLOPs" in printed


def test_bench_blocks_backward_and_unknown_names(tmp_path, capsys):
    out = tmp_path / "b.json"
    main_bench("blocks", ["--blocks", "ppm,nl", "--whole", "--backward", "--sizes", "6x6", "--channels", "16",
                          "--key-channels", "4", "--repeats", "1", "--json", str(out)])
    records = json.loads(out.read_text())
    assert [r["pass"] for r in records] == ["fwd+bwd", "fwd+bwd"] and records[1]["measured"] == "whole block"
    with pytest.raises(SystemExit) as exit_info:
        main_bench("blocks", ["--blocks", "nl,nonlocal"])
    assert exit_info.value.code == 2 and "unknown block(s) nonlocal" in capsys.readouterr().err


def test_bench_table5_rows(tmp_path, capsys):
    out = tmp_path / "t5.json"
    main_bench("table5", ["--size", "64x64,64x128", "--repeats", "1", "--json", str(out)])
    records = json.loads(out.read_text())
    rows = [(r["row"], r["form"]) for r in records if r["image_size"] == "64x64"]
    assert rows == [("+NL", "nlseg"), ("+CCNet", "nlseg"), ("+DANet", "nlseg"), ("+DRANet*", "nlseg"),
                    ("+Denoised NL", "released"), ("+Denoised NL", "nlseg")]
    assert {r["block_input"] for r in records} == {"512x4x4", "512x4x8"}
    for r in records:
        assert r["gflops"] > 0 and r["peak_mem_mib"] > 0 and r["ms"] > 0 and r["paper_gflops"] is None
    printed = capsys.readouterr().out
    assert "Denoised NL at 64x128: released" in printed and "nlseg saves" in printed


def test_bench_models_json_records(tmp_path):
    out = tmp_path / "m.json"
    main_bench("models", ["--models", "fcn_r18", "--size", "32x32", "--train", "--repeats", "1", "--json", str(out)])
    (r,) = json.loads(out.read_text())
    assert r["model"] == "fcn_r18" and r["mode"] == "train step" and r["size"] == "32x32" and r["repeats"] == 1
    assert r["params_m"] == pytest.approx(14.74, abs=0.01)  # the model table's figure
    assert r["images_per_s"] == pytest.approx(1e3 / r["ms"]) and r["peak_mem_mib"] > 0
    assert r["gflops"] == pytest.approx(1003.3 * (32 * 32) / (1024 * 2048), rel=0.05)  # scales with the pixels
    assert r["paper_s"] is None


def test_bench_ops_rows():
    args = argparse.Namespace(device="cpu", repeats=1, denoised_sizes=["4x4"], nonlocal_sizes=["4x6"],
                              max_released_gib=1.0)
    rows = bench_ops(args)
    assert [(r["op"], r["mode"]) for r in rows] == [
        ("denoised_attention", "fwd"), ("denoised_attention", "fwd+bwd"),
        ("nonlocal_attention", "fwd"), ("nonlocal_attention", "fwd+bwd"),
    ]
    assert all(r["released_ms"] > 0 and r["nlseg_peak_mib"] > 0 for r in rows)


def test_flop_count_sees_cpu_flash_attention():
    """FlopCounterMode does not know PyTorch's CPU flash kernel; nlseg counts it like the products it does."""
    from nlseg.analysis.benchmark import count_flops
    from nlseg.ops import nonlocal_attention, nonlocal_attention_reference

    q, k, v = torch.randn(1, 30, 8), torch.randn(1, 20, 8), torch.randn(1, 20, 8)
    closed_form = 2 * 30 * 20 * (8 + 8)  # q kᵀ and P v
    assert count_flops(lambda: nonlocal_attention(q, k, v)) == closed_form
    assert count_flops(lambda: nonlocal_attention_reference(q, k, v)) == closed_form
