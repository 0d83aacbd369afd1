"""The model table: the one place for the papers' figures of models; recipes, docs and registry agree with it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nlseg.config import list_recipes, load_config
from nlseg.models import ZOO, list_models, model_info, model_options, zoo_entry
from nlseg.models.zoo import ANN_INPUT, DNL_INPUT

DOCS = Path(__file__).resolve().parent.parent / "docs" / "models.md"
MIOU = re.compile(r"(\d+\.\d+) mIoU")


def test_the_registry_is_the_zoo():
    assert list_models() == list(ZOO)
    for name, entry in ZOO.items():
        assert entry.name == name
        info = model_info(name)
        assert (info["paper"], info["miou"], info["input_size"]) == (entry.description, entry.miou, entry.input_size)
        whole_cityscapes = entry.name.startswith(("ann", "fcn")) or entry.paper == "original"  # 2048 x 1024
        assert entry.input_size == (ANN_INPUT if whole_cityscapes else DNL_INPUT)
        for variant in entry.variants:
            assert set(variant.options) <= set(model_options(name)), f"{name}: {variant.row}"


def test_zoo_figures_of_the_papers():
    assert zoo_entry("ann_r101").description == "ANN Table 6: + AFNB + APNB (Full) (R-101)"
    ann = zoo_entry("ann_r101")
    assert (ann.miou, ann.params_m, ann.memory_mb, ann.inference_s) == (79.9, 63.17, 3375, 0.611)
    table5 = {n: (ZOO[n].table5_gflops, ZOO[n].table5_memory_mb) for n in ZOO if ZOO[n].table5_gflops is not None}
    assert table5 == {
        "denoised_nl_r101": (7.83, 428),
        "nl_r101": (7.63, 407),
        "ccnet_r101": (1.77, 52),
        "danet_r101": (10.04, 570),
        "dranet_r101": (0.76, 30),
    }
    assert zoo_entry("danet_r50").block == "danet" and zoo_entry("dnl_baseline_r50").block is None
    assert [v.miou for v in zoo_entry("denoised_nl_r101").variants] == [82.3, 82.5, None]


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match=r"unknown model 'danet_r100' \(did you mean 'danet_r101'\?\).*fcn_r18"):
        zoo_entry("danet_r100")


def _defaults_dropped(name: str, options: dict) -> dict:
    """``options`` less those at their default; lists (as YAML gives them) read as tuples."""
    defaults = model_options(name)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return {k: v for k, v in options.items() if defaults.get(k) != v}


def _zoo_miou(name: str, options: dict) -> float | None:
    """The zoo's mIoU of ``name`` with ``options``: the entry's own row, or the variant with those options."""
    entry = zoo_entry(name)
    options = _defaults_dropped(name, options)
    if not options:
        return entry.miou
    matches = [v for v in entry.variants if _defaults_dropped(name, dict(v.options)) == options]
    assert matches, f"{name} with {options}: no zoo row"
    return matches[0].miou


def test_recipes_quote_the_zoo():
    """A recipe's ``paper:`` string quotes the zoo's Cityscapes-val mIoU of its model (with its options)."""
    checked = 0
    for recipe in list_recipes():
        cfg = load_config(recipe)
        quoted = MIOU.search(cfg.paper)
        if quoted is None or (cfg.data.dataset, cfg.data.val_split) != ("cityscapes", "val"):
            continue  # demo recipes; other data sets and the test split are not model-table rows
        assert float(quoted.group(1)) == _zoo_miou(cfg.model.name, cfg.model.options), recipe
        checked += 1
    assert checked >= 30


def _doc_rows(header: str) -> list[list[str]]:
    """The cells of the Markdown table in docs/models.md whose header line starts with ``header``."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_docs_model_table_quotes_the_zoo():
    rows = _doc_rows("| model | options | paper row | paper mIoU |")
    expected = [(e.name, "", e.description, e.miou) for e in ZOO.values()]
    expected += [(e.name, v.options, v.row, v.miou) for e in ZOO.values() for v in e.variants]
    assert len(rows) == len(expected)
    by_row = {(cells[0].strip("`"), cells[2]): cells for cells in rows}
    for name, _, row, miou in expected:
        cells = by_row[(name, row)]
        assert cells[3] == ("—" if miou is None else f"{miou:.1f}"), (name, row)
        entry = ZOO[name]
        if cells[1] == "" and entry.table5_gflops is not None:
            assert cells[-1] == f"+{entry.table5_gflops:.2f}G / +{entry.table5_memory_mb:.0f} MB"


def test_docs_table_v_quotes_the_zoo():
    rows = _doc_rows("| Table V | paper |")
    models = {"+Denoised NL": "denoised_nl_r101", "+NL": "nl_r101", "+DANet": "danet_r101", "+CCNet": "ccnet_r101",
              "+DRANet*": "dranet_r101"}
    assert {cells[0]: cells[1] for cells in rows} == {
        row: f"{ZOO[name].table5_gflops:.2f}G" for row, name in models.items()
    }
