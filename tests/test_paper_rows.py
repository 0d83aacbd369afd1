"""Every row of ANN Tables 6, 7, 9 and Denoised NL Table II -> its recipe, checked against the paper's numbers.

For each row: the recipe quotes the row's mIoU; the model it builds (on the meta device: nothing is computed)
varies what the row varies (the blocks of Table 6, the APNB sampling method, n and S of Table 7, the stages
fused of Table 9, GR and LR of Table II); and the recipe differs from its table's Baseline recipe in nothing
else, field by field. The numbers below are typed from the papers, not read from nlseg.
Slow: every recipe added for these tables builds its model and trains one step on the synthetic data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from nlseg.blocks import AFNB, APNB, FNB, CommonFusion, DenoisedNL, NonLocal2d
from nlseg.config import load_config
from nlseg.engine.trainer import train
from nlseg.models import create_model
from nlseg.models.ann import LOW_STAGES


@dataclass(frozen=True)
class Row:
    table: str
    row: str
    recipe: str
    miou: float
    varies: dict[str, Any] = field(default_factory=dict)


# ANN Table 6 (Cityscapes val, R-101): varies = (fusion block, context block)
TABLE6 = [
    Row("ANN 6", "Baseline", "ann_baseline_r101_cityscapes", 75.8, {"blocks": (None, None)}),
    Row("ANN 6", "+ NB", "ann_nb_r101_cityscapes", 78.4, {"blocks": (None, NonLocal2d)}),
    Row("ANN 6", "+ APNB", "ann_apnb_r101_cityscapes", 78.6, {"blocks": (None, APNB)}),
    Row("ANN 6", "+ Common fusion", "ann_common_fusion_r101_cityscapes", 76.5, {"blocks": (CommonFusion, None)}),
    Row("ANN 6", "+ FNB", "ann_fnb_r101_cityscapes", 77.3, {"blocks": (FNB, None)}),
    Row("ANN 6", "+ AFNB", "ann_afnb_r101_cityscapes", 77.1, {"blocks": (AFNB, None)}),
    Row("ANN 6", "+ Common fusion + NB", "ann_common_fusion_nb_r101_cityscapes", 79.0,
        {"blocks": (CommonFusion, NonLocal2d)}),
    Row("ANN 6", "+ FNB + NB", "ann_fnb_nb_r101_cityscapes", 79.7, {"blocks": (FNB, NonLocal2d)}),
    Row("ANN 6", "+ AFNB + APNB (Full)", "ann_r101_cityscapes", 79.9, {"blocks": (AFNB, APNB)}),
]
# ANN Table 7 (the Full model): sampling method, n, S
TABLE7 = [
    Row("ANN 7", "random 15", "ann_r101_cityscapes_random15", 78.2, {"method": "random", "n": (15,), "S": 225}),
    Row("ANN 7", "max 15", "ann_r101_cityscapes_max15", 78.1, {"method": "max", "n": (15,), "S": 225}),
    Row("ANN 7", "average 15", "ann_r101_cityscapes_avg15", 78.4, {"method": "average", "n": (15,), "S": 225}),
    Row("ANN 7", "pyramid random 1,2,3,6", "ann_r101_cityscapes_pyramid_random1236", 78.8,
        {"method": "pyramid random", "n": (1, 2, 3, 6), "S": 50}),
    Row("ANN 7", "pyramid max 1,2,3,6", "ann_r101_cityscapes_pyramid_max1236", 79.1,
        {"method": "pyramid max", "n": (1, 2, 3, 6), "S": 50}),
    Row("ANN 7", "pyramid average 1,2,3,6", "ann_r101_cityscapes_pyramid_avg1236", 79.3,
        {"method": "pyramid average", "n": (1, 2, 3, 6), "S": 50}),
    Row("ANN 7", "pyramid average 1,3,6,8", "ann_r101_cityscapes", 79.9,
        {"method": "pyramid average", "n": (1, 3, 6, 8), "S": 110}),
    Row("ANN 7", "pyramid average 1,4,8,12", "ann_r101_cityscapes_pyramid_avg14812", 80.1,
        {"method": "pyramid average", "n": (1, 4, 8, 12), "S": 225}),
]
# ANN Table 9 (+ AFNB): the fusing layers
TABLE9 = [
    Row("ANN 9", "Baseline", "ann_baseline_r101_cityscapes", 75.8, {"fused": ()}),
    Row("ANN 9", "AFNB 4 & 5", "ann_afnb_r101_cityscapes", 77.1, {"fused": ("4 & 5",)}),
    Row("ANN 9", "AFNB 3 & 5, 4 & 5", "ann_afnb_r101_cityscapes_stages35_45", 76.7, {"fused": ("3 & 5", "4 & 5")}),
    Row("ANN 9", "AFNB 2 & 5, 3 & 5, 4 & 5", "ann_afnb_r101_cityscapes_stages25_35_45", 76.2,
        {"fused": ("2 & 5", "3 & 5", "4 & 5")}),
]
# Denoised NL Table II: GR, LR (None: the Baseline, no block)
TABLE2 = [
    Row(f"DNL II R-{d}", name, recipe, miou, {"GR": gr, "LR": lr})
    for d, rows in (
        (50, [("Baseline", "dnl_baseline_r50_cityscapes", 76.7, None, None),
              ("GR", "denoised_nl_r50_cityscapes_gr", 81.2, True, False),
              ("LR", "denoised_nl_r50_cityscapes_lr", 81.4, False, True),
              ("GR + LR", "denoised_nl_r50_cityscapes", 82.0, True, True)]),
        (101, [("Baseline", "dnl_baseline_r101_cityscapes", 77.9, None, None),
               ("GR", "denoised_nl_r101_cityscapes_gr", 82.3, True, False),
               ("LR", "denoised_nl_r101_cityscapes_lr", 82.5, False, True),
               ("GR + LR", "denoised_nl_r101_cityscapes", 83.5, True, True)]),
    )
    for name, recipe, miou, gr, lr in rows
]
ROWS = TABLE6 + TABLE7 + TABLE9 + TABLE2
BASELINES = {"ANN 6": "ann_baseline_r101_cityscapes", "ANN 7": "ann_r101_cityscapes",
             "ANN 9": "ann_baseline_r101_cityscapes", "DNL II R-50": "dnl_baseline_r50_cityscapes",
             "DNL II R-101": "dnl_baseline_r101_cityscapes"}
"""Each table's Baseline recipe (Table 7's is the Full model: its rows vary the Full model's APNB sampling)."""
MAY_DIFFER = {
    "ANN 6": {"model.name"},
    "ANN 7": {"model.options.context_pool_sizes", "model.options.context_pool_mode"},
    "ANN 9": {"model.name", "model.options.fusion_stages"},
    "DNL II R-50": {"model.name", "model.options.rectify", "model.options.retain"},
    "DNL II R-101": {"model.name", "model.options.rectify", "model.options.retain"},
}
"""The recipe fields each table varies: everything else (besides the recipe's name and paper line) is its Baseline's."""
NEW_RECIPES = sorted({r.recipe for r in TABLE7 + TABLE9} - {"ann_r101_cityscapes", "ann_afnb_r101_cityscapes"}
                     | {"ann_baseline_r101_cityscapes"})
METHODS = {"random": "random", "max": "max", "average": "avg"}
IDS = [f"{r.table}: {r.row}" for r in ROWS]


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):  # an empty mapping has no fields
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def meta_model(recipe: str) -> torch.nn.Module:
    cfg = load_config(recipe)
    with torch.device("meta"):
        return create_model(cfg.model.name, num_classes=19, **cfg.model.options)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_recipe_quotes_the_rows_miou(row):
    assert f"{row.miou} mIoU" in load_config(row.recipe).paper


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_recipe_differs_from_its_tables_baseline_only_in_what_the_row_varies(row):
    mine, base = (flat(load_config(name).to_dict()) for name in (row.recipe, BASELINES[row.table]))
    differing = {key for key in mine.keys() | base.keys() if mine.get(key) != base.get(key)}
    assert differing <= {"name", "paper"} | MAY_DIFFER[row.table], sorted(differing)


@pytest.mark.parametrize("row", TABLE6, ids=[f"{r.table}: {r.row}" for r in TABLE6])
def test_table6_rows_build_their_blocks(row):
    decoder = meta_model(row.recipe).decoder
    fusion, context = row.varies["blocks"]
    assert type(decoder.fusion) is fusion if fusion else decoder.fusion is None
    assert type(decoder.context) is context if context else decoder.context is None


@pytest.mark.parametrize("row", TABLE7, ids=[f"{r.table}: {r.row}" for r in TABLE7])
def test_table7_rows_sample_as_the_paper_says(row):
    decoder = meta_model(row.recipe).decoder
    apnb, afnb = decoder.context, decoder.fusion
    method = row.varies["method"]
    assert apnb.pool_mode == METHODS[method.removeprefix("pyramid ")]
    assert apnb.pool_sizes == row.varies["n"] and (len(apnb.pool_sizes) > 1) == method.startswith("pyramid")
    assert sum(n * n for n in apnb.pool_sizes) == row.varies["S"]
    assert (afnb.pool_sizes, afnb.pool_mode) == ((1, 3, 6, 8), "avg")  # only the APNB's sampling varies
    x = torch.zeros(1, 512, 20, 20, device="meta")
    key = apnb.key(x)
    assert apnb.attend(x).shape == (1, 512, 20, 20) and key.shape == (1, 256, 20, 20)


@pytest.mark.parametrize("row", TABLE9, ids=[f"{r.table}: {r.row}" for r in TABLE9])
def test_table9_rows_fuse_the_papers_stages(row):
    decoder = meta_model(row.recipe).decoder
    if not row.varies["fused"]:
        assert decoder.fusion is None and decoder.context is None
        return
    blocks = dict(decoder.fusion.items()) if isinstance(decoder.fusion, torch.nn.ModuleDict) else {
        "layer3": decoder.fusion}
    fused = tuple(f"{LOW_STAGES[stage].removeprefix('Stage')} & 5" for stage in blocks)
    assert fused == row.varies["fused"]
    assert all(type(block) is AFNB for block in blocks.values()) and decoder.context is None


@pytest.mark.parametrize("row", TABLE2, ids=[f"{r.table}: {r.row}" for r in TABLE2])
def test_table2_rows_switch_gr_and_lr(row):
    blocks = [m for m in meta_model(row.recipe).modules() if isinstance(m, DenoisedNL)]
    if row.varies["GR"] is None:
        assert not blocks
        return
    (block,) = blocks
    assert (block.rectify, block.retain) == (row.varies["GR"], row.varies["LR"])


TINY = [
    "data.dataset=synthetic", "data.root=null", "data.crop_size=48", "data.scale_range=[1.0, 1.0]",
    "data.num_workers=0", "data.options={length: 2, size: 48}", "loss.class_weights=null", "loss.ohem_min_kept=1",
    "train.iters=1", "train.batch_size=2", "train.device=cpu", "train.evaluate=false", "train.checkpoint_interval=1",
    "model.options.backbone_width=8", "model.options.head_channels=16", "model.options.key_channels=8",
    "model.options.value_channels=8",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", NEW_RECIPES)
def test_every_new_recipe_builds_and_trains_one_step(recipe, tmp_path):
    torch.manual_seed(0)
    cfg = load_config(recipe, TINY)
    train(cfg, tmp_path / "work")
    assert (tmp_path / "work" / "last.pt").is_file()
