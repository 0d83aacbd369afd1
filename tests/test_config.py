"""Recipes as data: loading, overrides, validation errors, and every shipped recipe."""
from __future__ import annotations

import pytest
import torch
import yaml

from nlseg.config import Config, ConfigError, list_recipes, load_config
from nlseg.models import create_model, list_models, model_options

REQUIRED_KEYS = [
    "model.name=fcn_r50", "data.root=/data", "data.crop_size=[64, 96]", "train.iters=7", "train.batch_size=2",
    "train.lr=0.5", "train.seed=3", "train.checkpoint_interval=5",
]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "fcn_r18"}, "data": {"crop_size": 32}, "train": {"lr": "1e-2"}}))
    return path


def test_defaults_square_crop_and_yaml_floats(recipe):
    cfg = load_config(recipe)
    assert cfg.name == "r" and cfg.model.name == "fcn_r18"
    assert cfg.data.crop_size == [32, 32]  # one number means a square
    assert cfg.train.lr == 0.01  # "1e-2" is a string to YAML 1.1; accepted as a float
    assert cfg.train.iters == Config().train.iters


def test_required_override_keys(recipe):
    cfg = load_config(recipe, REQUIRED_KEYS + ["model.options.align_corners=false"])
    assert (cfg.model.name, cfg.data.root, cfg.data.crop_size) == ("fcn_r50", "/data", [64, 96])
    assert (cfg.train.iters, cfg.train.batch_size, cfg.train.lr) == (7, 2, 0.5)
    assert (cfg.train.seed, cfg.train.checkpoint_interval) == (3, 5)
    assert cfg.model.options == {"align_corners": False}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown config key 'train.lrr'; did you mean 'train.lr'"),
        ("trian.iters=3", "unknown config key 'trian'; did you mean 'train.'"),
        ("data.crop=3", "did you mean 'data.crop_size'"),
        ("train.iters=many", "train.iters must be int, got 'many'"),
        ("train.iters=2.5", "train.iters must be int"),
        ("train.flip=true", "unknown config key 'train.flip'; did you mean 'data.flip'"),
        ("data.flip=3", "data.flip must be bool"),
        ("model=3", "model must be a mapping"),
        ("noequals", "must read key=value"),
    ],
)
def test_override_errors_name_key_and_suggest(recipe, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(recipe, [override])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  itres: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'train\.itres'; did you mean 'train\.iters'"):
        load_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="did you mean denoised_nl_r101_cityscapes"):
        load_config("denoised_nl_r101_citiscapes")


def test_round_trip_through_dict(recipe):
    cfg = load_config(recipe, ["model.options.head_channels=8"])
    assert Config.from_dict(cfg.to_dict()) == cfg


RECIPES = list_recipes()


def test_the_paper_rows_are_there():
    required = {
        "denoised_nl_r101_cityscapes", "denoised_nl_r101_ade20k", "ann_r101_cityscapes", "ann_r101_ade20k",
        "ann_r101_pascal_context", "fcn_r101_cityscapes", "demo",
        # Denoised NL Table II-IV and ANN Table 6 rows
        "denoised_nl_r101_cityscapes_gr", "denoised_nl_r101_cityscapes_lr", "dnl_baseline_r101_cityscapes",
        "nl_r101_cityscapes", "ocnet_r101_cityscapes", "ccnet_r101_cityscapes", "danet_r101_cityscapes",
        "dranet_r101_cityscapes", "ppm_r101_cityscapes", "aspp_r101_cityscapes", "ann_nb_r101_cityscapes",
        "ann_apnb_r101_cityscapes", "ann_common_fusion_r101_cityscapes", "ann_fnb_r101_cityscapes",
        "ann_afnb_r101_cityscapes", "ann_common_fusion_nb_r101_cityscapes", "ann_fnb_nb_r101_cityscapes",
    }
    assert required <= set(RECIPES), sorted(required - set(RECIPES))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_valid(name):
    cfg = load_config(name)
    assert cfg.name == name and cfg.paper, "a recipe says which paper row it reproduces"
    assert cfg.model.name in list_models()
    accepted = model_options(cfg.model.name)
    assert set(cfg.model.options) <= set(accepted), set(cfg.model.options) - set(accepted)
    # one loss weight per auxiliary output of the model (built narrow: only the head count matters)
    model = create_model(cfg.model.name, num_classes=3, **{**cfg.model.options, "backbone_width": 8}).eval()
    with torch.no_grad():
        aux = model(torch.zeros(1, 3, 33, 33))["aux"]
    assert len(cfg.loss.aux_weights) == len(aux)
