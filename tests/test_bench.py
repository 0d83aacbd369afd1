"""nlseg bench: FLOP counts against closed forms and the papers' figures, the measured units, the JSON records."""
from __future__ import annotations

import json

import pytest
import torch

from nlseg.analysis.measure import ModuleWorkload, count_flops, meta_gflops
from nlseg.analysis.tables.ann_table1 import ANN_TABLE1, block_workloads, blocks_table
from nlseg.analysis.tables.ann_table2 import models_table
from nlseg.analysis.tables.dnl_table5 import table5_workloads
from nlseg.analysis.tables.ops import ops_table
from nlseg.blocks import APNB, DenoisedNL, set_fused
from nlseg.cli import main as cli_main
from nlseg.models import create_model
from nlseg.models.zoo import ZOO

S = 1 + 9 + 36 + 64  # APNB's anchors, pool sizes (1, 3, 6, 8)


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


def gflops(workloads: list) -> list[float]:
    return [meta_gflops(workload) for workload, _, _ in workloads]


@pytest.mark.parametrize("size", [(96, 96), (128, 256)])
def test_table1_flops_match_closed_forms_and_the_paper(size):
    n, (c, ck) = size[0] * size[1], (2048, 256)
    materialised, nb = gflops(block_workloads("nb", size))
    (apnb,) = gflops(block_workloads("apnb", size))
    assert materialised == nb  # one algorithm, two ways of computing it
    assert nb * 1e9 == 2 * nb_unit_macs(n, c, ck)
    assert apnb * 1e9 == 2 * apnb_unit_macs(n, c, ck)
    # ANN Table 1's "GFLOPs" are these multiply-adds plus what its torchstat count adds: a conv bias per output
    # (key, value: Ĉ; Wo: C), BN 2 and ReLU 1 per element of the key map: N (5 Ĉ + C). NB: 58.0 and 601.4.
    assert round((nb / 2 * 1e9 + n * (5 * ck + c)) / 1e9, 1) == ANN_TABLE1[("nb", size)][0]
    if size == (96, 96):  # APNB: 15.0 against the paper's 15.5 (its 256x128 figure, 43.5, is below 3 N C Ĉ alone)
        assert apnb / 2 == pytest.approx(ANN_TABLE1[("apnb", size)][0], rel=0.04)


def test_whole_blocks_add_the_fusion_conv():
    size, n, c, ck = (24, 32), 24 * 32, 64, 16
    (nb,) = gflops(block_workloads("nb", size, channels=c, key_channels=ck, whole=True))  # NonLocal2d: θ, φ
    (apnb,) = gflops(block_workloads("apnb", size, channels=c, key_channels=ck, whole=True))
    assert nb * 1e9 == 2 * (n * c * ck + nb_unit_macs(n, c, ck) + fusion_macs(n, c))
    assert apnb * 1e9 == 2 * (apnb_unit_macs(n, c, ck) + fusion_macs(n, c))


def test_table1_unit_is_the_blocks_attention_branch():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    for pools in [None, (1, 3, 6, 8)]:
        block = APNB(16, key_channels=4, value_channels=4, pool_sizes=pools).double().eval()
        torch.nn.init.normal_(block.out_proj.weight)  # Wo starts at zero; make it show
        with torch.no_grad():
            context = block.attend(x)
            torch.testing.assert_close(block.fuse(torch.cat([context, x], 1)), block(x))  # the rest of the block
            set_fused(block, False)
            torch.testing.assert_close(block.attend(x), context)  # materialised: the same function
        fusion = sum(p.numel() for p in block.fuse.parameters())
        name = "nb" if pools is None else "apnb"
        for _, _, params in block_workloads(name, (7, 9), channels=16, key_channels=4):
            assert params == sum(p.numel() for p in block.parameters()) - fusion


def test_released_denoised_nl_is_the_same_function():
    torch.manual_seed(0)
    block = DenoisedNL(8, key_channels=4).double()
    torch.nn.init.constant_(block.gamma, 0.7)
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    probs = torch.randn(1, 3, 6, 5, dtype=torch.float64).softmax(1)
    fused = block(x, probs)
    set_fused(block, False)
    torch.testing.assert_close(block(x, probs), fused)


def test_table5_flops_are_the_papers_deltas():
    """At 768x768 (block input 512 x 48 x 48) the blocks add what Table V says, to the printed digits."""
    flops = {(d["row"], d["form"]): meta_gflops(w) for d, w, _ in table5_workloads((48, 48))}
    paper = {d["row"]: d["paper_gflops"] for d, _, _ in table5_workloads((48, 48))}
    assert paper == {"+NL": 7.63, "+CCNet": 1.77, "+DANet": 10.04, "+DRANet*": 0.76, "+Denoised NL": 7.83}
    for row in ("+NL", "+DANet", "+Denoised NL"):
        assert round(flops[(row, "nlseg")], 2) == paper[row]
    assert flops[("+Denoised NL", "released")] == flops[("+Denoised NL", "nlseg")]
    # CCNet: our block makes R = 2 passes, the paper's figure is one (1.76 against 1.77); DRANet*: 0.73 against 0.76
    assert flops[("+CCNet", "nlseg")] / 2 == pytest.approx(paper["+CCNet"], abs=0.01)
    assert flops[("+DRANet*", "nlseg")] == pytest.approx(paper["+DRANet*"], abs=0.04)


def test_table5_measures_the_modules_the_models_hold():
    """Each row's block is the context module of its model (same class, same state-dict keys and shapes)."""
    for described, workload, _ in table5_workloads((4, 4)):
        entry = ZOO[described["model"]]
        with torch.device("meta"):
            model = create_model(entry.name, num_classes=19)
            measured = workload.build()
        inside = [m for m in model.modules() if type(m) is type(measured)]
        assert inside, f"{entry.name} holds no {type(measured).__name__}"
        shapes = {k: v.shape for k, v in measured.state_dict().items()}
        assert any({k: v.shape for k, v in m.state_dict().items()} == shapes for m in inside), entry.name


def test_bench_blocks_danet_is_the_module_of_danet_r101(tmp_path):
    """`nlseg bench blocks --blocks danet` measures the module danet_r101 uses: same class, keys and shapes."""
    out = tmp_path / "danet.json"
    assert cli_main(["bench", "blocks", "--blocks", "danet", "--channels", "512", "--sizes", "4x4", "--repeats",
                     "1", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    ((workload, what, params),) = block_workloads("danet", (4, 4), channels=512)
    assert (record["block"], record["measured"], record["params"]) == ("danet", "whole block", params)
    with torch.device("meta"):
        measured = workload.build()
        model = create_model("danet_r101", num_classes=19)
    inside = [m for m in model.modules() if type(m) is type(measured)]
    assert len(inside) == 1
    assert {k: v.shape for k, v in inside[0].state_dict().items()} == {
        k: v.shape for k, v in measured.state_dict().items()
    }


BLOCK_KEYS = {
    "block": str, "measured": str, "size": str, "channels": int, "key_channels": int, "pass": str, "device": str,
    "gflops": float, "gmacs": float, "params": int, "peak_mem_mib": float, "ms": float, "ms_min": float,
    "ms_max": float,
}


def test_bench_blocks_json_records(tmp_path, capsys):
    out = tmp_path / "blocks.json"
    argv = ["bench", "blocks", "--blocks", "nb,apnb,afnb,denoised_nl", "--sizes", "8x8,6x10", "--channels", "32",
            "--key-channels", "8", "--low-channels", "16", "--repeats", "1", "--json", str(out)]
    assert cli_main(argv) == 0
    records = json.loads(out.read_text())
    assert [(r["block"], r["size"]) for r in records] == [
        (b, s) for s in ("8x8", "6x10") for b in ("nb", "nb", "apnb", "afnb", "denoised_nl")
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
    assert "| nb | ANN Table 1 unit, materialised (as the paper) | 8x8 | fwd |" in printed
    assert "NB (ANN Table 1 unit, materialised (as the paper)) / APNB at 6x10 (fwd): GFLOPs" in printed


def test_bench_blocks_backward_and_unknown_names(tmp_path, capsys):
    report = blocks_table(["ppm", "nb"], [(6, 6)], channels=16, key_channels=4, whole=True, backward=True, repeats=1)
    assert [r["pass"] for r in report.records] == ["fwd+bwd", "fwd+bwd"]
    assert report.records[1]["measured"] == "whole block"
    assert cli_main(["bench", "blocks", "--blocks", "nb,nonlocal"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nlseg bench: error: --blocks: unknown block(s) nonlocal; known: ")
    assert cli_main(["bench", "blocks", "--whole", "--lean-only"]) == 2
    assert "--lean-only applies to the ANN Table 1 unit" in capsys.readouterr().err


def test_bench_table5_rows(tmp_path, capsys):
    out = tmp_path / "t5.json"
    assert cli_main(["bench", "table5", "--size", "64x64,64x128", "--repeats", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    rows = [(r["row"], r["form"]) for r in records if r["image_size"] == "64x64"]
    assert rows == [("+NL", "nlseg"), ("+CCNet", "nlseg"), ("+DANet", "nlseg"), ("+DRANet*", "nlseg"),
                    ("+Denoised NL", "released"), ("+Denoised NL", "nlseg")]
    assert {r["block_input"] for r in records} == {"512x4x4", "512x4x8"}
    for r in records:
        assert r["gflops"] > 0 and r["peak_mem_mib"] > 0 and r["ms"] > 0 and r["paper_gflops"] is None
    printed = capsys.readouterr().out
    assert "Denoised NL at 64x128: released" in printed and "nlseg saves" in printed


def test_bench_models_records():
    (r,) = models_table(["fcn_r18"], (32, 32), train=True, repeats=1).records
    assert r["model"] == "fcn_r18" and r["mode"] == "train step" and r["size"] == "32x32" and r["repeats"] == 1
    assert r["params_m"] == pytest.approx(14.74, abs=0.01)  # the model table's figure
    assert r["images_per_s"] == pytest.approx(1e3 / r["ms"]) and r["peak_mem_mib"] > 0
    assert r["gflops"] == pytest.approx(1003.3 * (32 * 32) / (1024 * 2048), rel=0.05)  # scales with the pixels
    assert r["paper_s"] is None


@pytest.mark.slow
def test_bench_models_paper_figures_come_from_the_zoo(monkeypatch):
    """At ANN's input size the record carries ann_r101's Table 2 figures, read from the model table."""
    import nlseg.analysis.tables.ann_table2 as table2

    entry = ZOO["ann_r101"]
    assert (entry.inference_s, entry.memory_mb, entry.params_m) == (0.611, 3375, 63.17)
    monkeypatch.setattr(table2, "create_model", lambda name, num_classes: create_model("fcn_r18", num_classes=2))
    (r,) = models_table(["ann_r101"], entry.input_size, num_classes=2, repeats=1).records  # an fcn_r18 stands in
    assert (r["paper_s"], r["paper_mem_mb"], r["paper_params_m"]) == (0.611, 3375, 63.17)


def test_bench_ops_rows_count_flops_on_meta():
    n, c = 4 * 6, 256
    report = ops_table(repeats=1, denoised_sizes=[(4, 4)], nonlocal_sizes=[(4, 6)], max_released_gib=1.0,
                       matmul_size=64)
    rows = report.records
    assert [(r["op"], r["mode"]) for r in rows] == [
        ("denoised_attention", "fwd"), ("denoised_attention", "fwd+bwd"),
        ("nonlocal_attention", "fwd"), ("nonlocal_attention", "fwd+bwd"),
    ]
    assert all(r["released_ms"] > 0 and r["nlseg_peak_mib"] > 0 for r in rows)
    # q kᵀ and A v forward, four products backward: the algorithm's work (the CPU flash backward, counted on the
    # real device, would add a fifth: it recomputes q kᵀ).
    assert rows[2]["gflop"] * 1e9 == 2 * n * n * c * 2
    assert rows[3]["gflop"] * 1e9 == 2 * n * n * c * 6
    assert "| nonlocal_attention | 4x6 | fwd+bwd |" in report.markdown()


def test_flop_count_sees_cpu_flash_attention():
    """FlopCounterMode does not know PyTorch's CPU flash kernel; nlseg counts it like the products it does."""
    from nlseg.ops import nonlocal_attention, nonlocal_attention_reference

    q, k, v = torch.randn(1, 30, 8), torch.randn(1, 20, 8), torch.randn(1, 20, 8)
    closed_form = 2 * 30 * 20 * (8 + 8)  # q kᵀ and P v
    assert count_flops(lambda: nonlocal_attention(q, k, v)) == closed_form
    assert count_flops(lambda: nonlocal_attention_reference(q, k, v)) == closed_form


def test_module_workload_counts_on_meta_what_it_runs():
    conv = ModuleWorkload(lambda: torch.nn.Conv2d(3, 5, 1, bias=False), ((2, 3, 4, 4),), backward=True)
    macs = 2 * 16 * 3 * 5  # (B·H·W) x C_in x C_out
    assert count_flops(conv(torch.device("cpu"))) == count_flops(conv(torch.device("meta"))) == 2 * 2 * macs
    assert meta_gflops(conv) == pytest.approx(4 * macs / 1e9, rel=1e-12)  # forward and the weight's gradient


def _actions(parser):
    """Every argument of ``parser`` and of its subcommands, with the subcommand's prog."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield parser.prog, action


@pytest.mark.parametrize("command", ["bench", "viz"])
def test_every_argument_has_a_help_line(command):
    from nlseg.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    arguments = list(_actions(commands.choices[command]))
    assert len(arguments) > 10
    assert [(prog, a.dest) for prog, a in arguments if not a.help] == []


def test_analysis_takes_no_command_line():
    """argparse lives in nlseg/cli only: the analysis library takes plain values."""
    from pathlib import Path

    import nlseg.analysis

    sources = sorted(Path(nlseg.analysis.__file__).parent.rglob("*.py"))
    assert len(sources) >= 8
    assert [str(p) for p in sources if "argparse" in p.read_text()] == []
