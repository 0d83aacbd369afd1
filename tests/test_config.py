"""Recipes as data: loading, overrides, validation errors, and every shipped recipe."""
from __future__ import annotations

import pytest
import torch
import yaml

from conftest import tiered

import nlseg.config.checks as config_module
from nlseg.config import CHECKS, Config, ConfigError, field_rules, list_recipes, load_config
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
    with pytest.raises(ConfigError, match="did you mean 'denoised_nl_r101_cityscapes'"):
        load_config("denoised_nl_r101_citiscapes")


def test_round_trip_through_dict(recipe):
    cfg = load_config(recipe, ["model.options.head_channels=8"])
    assert Config.from_dict(cfg.to_dict()) == cfg


RECIPES = list_recipes()
FAST_RECIPES = ["demo", "ann_r101_cityscapes", "denoised_nl_r101_cityscapes", "danet_head_r50_cityscapes", "custom_folder",
                "ann_r101_ade20k", "denoised_nl_r101_ade20k", "ann_r101_pascal_context", "ann_r101_coco_stuff10k", "ann_r101_nyudv2"]
"""One recipe of each kind (each data set, both papers, the heads, your own folder) for ``make test``."""


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


@pytest.mark.parametrize("name", tiered(RECIPES, fast=FAST_RECIPES))
def test_every_recipe_is_valid(name):
    cfg = load_config(name)
    assert cfg.name == name and cfg.paper, "a recipe says which paper row it reproduces"
    assert cfg.model.name in list_models()
    accepted = model_options(cfg.model.name)
    assert set(cfg.model.options) <= set(accepted), set(cfg.model.options) - set(accepted)
    # one loss weight per auxiliary output of the model (built narrow: only the head count matters)
    model = create_model(cfg.model.name, num_classes=3, **{**cfg.model.options, "backbone_width": 8}).eval()
    with torch.no_grad():
        aux = model(torch.zeros(1, 3, 33, 33), with_aux=True)["aux"]
    assert len(cfg.loss.aux_weights) == len(aux)


# --- every recipe field checked at the door -----------------------------------------------------------

# (override, words the one-line error must hold); the recipe is fcn_r18 (one auxiliary head) on synthetic data.
BAD_VALUES = [
    ("eval.mode=slid", "eval.mode must be one of whole, slide, got 'slid' (did you mean 'slide'?)"),
    ("loss.main=ohm", "loss.main must be one of ce, ohem, got 'ohm' (did you mean 'ohem'?)"),
    ("train.amp=bf61", "train.amp must be one of off, bf16, fp16, got 'bf61'"),
    ("train.amp=on", "train.amp must be one of off, bf16, fp16, got true (YAML reads on/yes/true as a boolean; use bf16 or fp16)"),
    ("train.optimizer=adam", "train.optimizer must be one of sgd, adamw, got 'adam' (did you mean 'adamw'?)"),
    ("train.iters=0", "train.iters must be >= 1, got 0"),
    ("train.iters=-3", "train.iters must be >= 1, got -3"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.log_interval=0", "train.log_interval must be >= 1, got 0"),
    ("train.checkpoint_interval=0", "train.checkpoint_interval must be >= 1, got 0"),
    ("train.eval_interval=-1", "train.eval_interval must be >= 0, got -1"),
    ("train.grad_accum=0", "train.grad_accum must be >= 1, got 0"),
    ("train.lr=-1", "train.lr must be > 0, got -1.0"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.momentum=1", "train.momentum must be in [0, 1), got 1.0"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0, got -0.1"),
    ("train.poly_power=-1", "train.poly_power must be >= 0, got -1.0"),
    ("train.warmup_iters=-1", "train.warmup_iters must be >= 0, got -1"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio must be in [0, 1], got 1.5"),
    ("train.seed=-1", "train.seed must be >= 0, got -1"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train.tensorboard=maybe", "train.tensorboard must be bool, got 'maybe'"),
    ("train.channels_last=nhwc", "train.channels_last must be bool, got 'nhwc'"),
    ("train.compile=inductor", "train.compile must be bool, got 'inductor'"),
    ("data.crop_size=0", "data.crop_size[0] must be >= 1, got 0"),
    ("data.crop_size=[8, 8, 8]", "data.crop_size must be [H, W] or one number for a square, got [8, 8, 8]"),
    ("data.scale_range=[2, 1]", "data.scale_range must be [low, high] with low <= high, got [2.0, 1.0]"),
    ("data.scale_range=[0, 1]", "data.scale_range[0] must be > 0, got 0.0"),
    ("data.scale_range=[1]", "data.scale_range must be a list of 2, got [1.0]"),
    ("data.base_size=0", "data.base_size must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("data.brightness=-0.5", "data.brightness must be >= 0, got -0.5"),
    ("data.contrast=-0.5", "data.contrast must be >= 0, got -0.5"),
    ("data.saturation=-0.5", "data.saturation must be >= 0, got -0.5"),
    ("loss.ohem_threshold=0", "loss.ohem_threshold must be in (0, 1], got 0.0"),
    ("loss.ohem_min_kept=-1", "loss.ohem_min_kept must be >= 0, got -1"),
    ("loss.aux_weights=[-1]", "loss.aux_weights[0] must be >= 0, got -1.0"),
    ("eval.crop_size=0", "eval.crop_size[0] must be >= 1, got 0"),
    ("eval.stride=[4, 0]", "eval.stride[1] must be >= 1, got 0"),
    ("eval.size=[4]", "eval.size must be [H, W] or one number for a square, got [4]"),
    ("eval.scales=[]", "eval.scales must be a list of at least 1, got []"),
    ("eval.scales=[0.5, -1]", "eval.scales[1] must be > 0, got -1.0"),
    # rules between fields and against the registries
    ("model.name=fcn_r5", "model.name must be a registered model (nlseg list models), got 'fcn_r5' (did you mean"),
    ("model.options.rectify=true", "model.options.rectify is not an option of fcn_r18; its options: backbone,"),
    ("model.options.output_stride=7", "are not valid for fcn_r18: output_stride must be one of (8, 16, 32), got 7"),
    ("model.options.align_corners=banana", "model.options.align_corners of fcn_r18 must be true or false, got 'banana'"),
    ("model.options.backbone_width=1.5", "model.options.backbone_width of fcn_r18 must be an integer, got 1.5"),
    ("model.options.backbone_width=true", "model.options.backbone_width of fcn_r18 must be an integer, got True"),
    ("model.options.multi_grid=[1, x]", "model.options.multi_grid of fcn_r18 must be a list of integers or null, got [1, 'x']"),
    ("model.options.dropout=.inf", "model.options.dropout of fcn_r18 must be a finite number, got inf"),
    ("model.options.stem=3", "model.options.stem of fcn_r18 must be a string, got 3"),
    ("loss.aux_weights=[1, 1]", "loss.aux_weights must hold 1 weight(s), one per auxiliary head of fcn_r18, got [1.0, 1.0]"),
    ("data.dataset=citiscapes", "data.dataset: unknown data set 'citiscapes'"),
    ("data.options.sizee=[48, 64]", "data.options.sizee is not an option of the synthetic data set (did you mean 'size'?)"),
    ("data.eval_options.lenght=3", "data.eval_options.lenght is not an option of the synthetic data set (did you mean 'length'?)"),
    ("data.val_split=validation", "data.val_split must be a split of synthetic (train, val, test), got 'validation'"),
    ("train.grad_accum=3", "train.batch_size must be a multiple of train.grad_accum=3"),
    ("eval.mode=slide", "eval.crop_size must be set for eval.mode=slide"),
]


@pytest.fixture
def generated(monkeypatch):
    """SyntheticContext says it needs no data.root (the data set class's ``requires_root = False``)."""
    from nlseg.data import dataset_class

    monkeypatch.setattr(dataset_class("synthetic"), "requires_root", False, raising=False)


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_every_bad_value_is_one_line_naming_set_key_value_and_rule(recipe, generated, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(recipe, [override], purpose="train")
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(("--set: ", f"{recipe} with --set: "))


def test_eval_stride_at_most_the_crop(recipe):
    load_config(recipe, ["eval.mode=slide", "eval.crop_size=8", "eval.stride=[8, 4]"])
    with pytest.raises(ConfigError, match=r"eval\.stride must be at most eval\.crop_size=\[8, 8\] .*, got \[9, 4\]"):
        load_config(recipe, ["eval.mode=slide", "eval.crop_size=8", "eval.stride=[9, 4]"])


def test_a_bad_value_in_the_file_names_the_file(tmp_path, generated):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: fcn_r18}\neval: {mode: slid}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: eval\.mode must be one of whole, slide, got 'slid'"):
        load_config(path)
    load_config(path, ["eval.mode=slide", "eval.crop_size=32"])  # an override mends the file
    path.write_text("model: {name: fcn_r18}\nloss: {aux_weights: [1.0, 1.0]}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: loss\.aux_weights must hold 1 weight"):
        load_config(path, purpose="train")
    with pytest.raises(ConfigError, match=rf"^{path} with --set: loss\.aux_weights must hold 2 weight.*denoised_nl_r18, got \[1\.0\]"):
        load_config(path, ["model.name=denoised_nl_r18", "loss.aux_weights=[1]"], purpose="train")


def test_from_dict_checks_every_field_and_the_rules_of_reading():
    with pytest.raises(ConfigError, match=r"^ckpt: train\.iters must be >= 1, got 0$"):
        Config.from_dict({"train": {"iters": 0}}, source="ckpt")
    with pytest.raises(ConfigError, match=r"^ckpt: eval\.crop_size must be set for eval\.mode=slide"):
        Config.from_dict({"eval": {"mode": "slide"}}, source="ckpt")
    with pytest.raises(ConfigError, match=r"^ckpt: data\.options\.sizee is not an option of the synthetic data set"):
        Config.from_dict({"data": {"options": {"sizee": 3}}}, source="ckpt")


def test_the_model_rules_apply_to_training(recipe, generated):
    """predict, eval and viz take the model from the checkpoint: the recipe's model, loss weights and batch
    matter when it trains."""
    cases = {"model.name=oracle": "model.name", "loss.aux_weights=[1, 1]": "loss.aux_weights",
             "train.grad_accum=3": "train.batch_size"}
    for override, key in cases.items():
        load_config(recipe, [override], purpose="eval")
        with pytest.raises(ConfigError, match=rf"(^--set| with --set): {key} "):
            load_config(recipe, [override], purpose="train")


@pytest.mark.parametrize("text, override", [("amp: off", None), ("amp: bf16", "train.amp=off"), ("amp: false", None)])
def test_yaml_off_means_amp_off(tmp_path, text, override):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {{name: fcn_r18}}\ntrain: {{{text}}}\n")
    assert load_config(path, [override] if override else []).train.amp == "off"


def test_machine_rules_apply_when_the_recipe_is_loaded_to_train(recipe, tmp_path, monkeypatch):
    """The device, TensorBoard and the weight files are checked for training, not when a recipe is only read."""
    from nlseg.data import dataset_class

    monkeypatch.setattr(dataset_class("synthetic"), "requires_root", False, raising=False)  # generated data
    monkeypatch.setattr(config_module, "_cuda_count", lambda: 0)
    monkeypatch.setattr(config_module, "_installed", lambda package: False)
    missing = tmp_path / "missing.pth"
    cases = [
        ("train.device=cuda", "train.device must be cpu or auto: this machine has no CUDA device, got 'cuda'"),
        ("train.device=cuda:0", "train.device must be cpu or auto: this machine has no CUDA device, got 'cuda:0'"),
        ("train.amp=fp16", "(file) train.amp must be off or bf16 on the CPU (fp16 needs CUDA), got 'fp16' with train.device='auto'"),
        ("train.tensorboard=true", "train.tensorboard is true but tensorboard is not installed; install it with pip install 'nlseg[tb]'"),
        (f"model.init_from={missing}", f"model.init_from must be an existing file, got '{missing}' (no such file)"),
        (f"model.pretrained_backbone={missing}", "model.pretrained_backbone must be an existing file or a weights name "
                                                 f"(nlseg list weights), got '{missing}' (no such file or name)"),
        ("model.pretrained_backbone=torchvision-resnet5", "model.pretrained_backbone must be an existing file or a "
         "weights name (nlseg list weights), got 'torchvision-resnet5' (no such file or name; close names: "
         "torchvision-resnet50, torchvision-resnet18, torchvision-resnet101)"),
    ]
    for override, message in cases:
        load_config(recipe, [override])  # only read: no machine rule
        with pytest.raises(ConfigError) as info:
            load_config(recipe, [override], purpose="train")
        where = f"{recipe} with --set:" if message.startswith("(file)") else "--set:"  # the device is the file's
        assert str(info.value) == f"{where} {message.removeprefix('(file) ')}"
    monkeypatch.setattr(config_module, "_cuda_count", lambda: 2)
    monkeypatch.setattr(config_module, "_installed", lambda package: True)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    cfg = load_config(recipe, ["train.device=cuda:1", "train.amp=fp16", "train.tensorboard=true",
                               f"model.init_from={weights}"], purpose="train")
    assert (cfg.train.device, cfg.train.tensorboard, cfg.model.init_from) == ("cuda:1", True, str(weights))
    with pytest.raises(ConfigError, match=r"^--set: train\.device must be cuda:0 to cuda:1 on this machine, got 'cuda:2'$"):
        load_config(recipe, ["train.device=cuda:2"], purpose="train")


def test_data_root_is_checked_when_the_data_is_needed(recipe, tmp_path, monkeypatch):
    on_disk = ["data.dataset=cityscapes", "data.options={}"]
    load_config(recipe, on_disk)  # reading a recipe (e.g. for predict) needs no data set
    for purpose in ("eval", "train"):
        with pytest.raises(ConfigError, match=r"with --set: data\.root must be set to the folder of the cityscapes data set \(--set data\.root="):
            load_config(recipe, on_disk, purpose=purpose)
    with pytest.raises(ConfigError, match=r"^--set: data\.root must be an existing folder of the cityscapes data set, got '/no/such'"):
        load_config(recipe, [*on_disk, "data.root=/no/such"], purpose="eval")
    assert load_config(recipe, [*on_disk, f"data.root={tmp_path}"], purpose="eval").data.root == str(tmp_path)
    # a generated data set says so with requires_root = False
    from nlseg.data import dataset_class

    monkeypatch.setattr(dataset_class("synthetic"), "requires_root", False, raising=False)
    assert load_config(recipe, purpose="train").data.root is None


def test_a_required_data_set_option_must_be_set(recipe, monkeypatch):
    """A data set whose constructor has an option without default (the folder data set's ``classes``)."""
    from nlseg.registry import DATASETS

    class Folder:
        splits = ("train", "val")

        def __init__(self, root: str, split: str, transform=None, *, classes: list[str], ignore_index: int = 255):
            pass

    DATASETS.names()  # filled first, then the stand-in added for this test only
    monkeypatch.setitem(DATASETS._items, "mine", Folder)
    with pytest.raises(ConfigError, match=r"data\.options\.classes is required by the mine data set and is not set"):
        load_config(recipe, ["data.dataset=mine", "data.options={}"])
    with pytest.raises(ConfigError, match=r"data\.options\.clases is not an option of the mine data set \(did you mean 'classes'\?\); its options: classes, ignore_index"):
        load_config(recipe, ["data.dataset=mine", "data.options={clases: [a, b]}"])
    cfg = load_config(recipe, ["data.dataset=mine", "data.options={classes: [a, b]}"])
    assert cfg.data.options == {"classes": ["a", "b"]}


def test_every_key_has_a_rule_and_every_check_names_known_keys():
    rules = field_rules()
    assert rules["train.iters"] == "int >= 1" and rules["eval.mode"] == "whole | slide"
    assert rules["data.scale_range"] == "list of float > 0 a list of 2 [low, high] with low <= high"
    assert set(rules) >= {"model.init_from", "train.tensorboard"}
    for check in CHECKS:
        assert set(check.keys) <= set(rules), check


@pytest.mark.parametrize("name", tiered(RECIPES, fast=FAST_RECIPES))
def test_every_recipe_loads_to_train_and_to_evaluate(name, tmp_path):
    for purpose in ("eval", "train"):
        cfg = load_config(name, [f"data.root={tmp_path}"], purpose=purpose)
        assert cfg.name == name


def test_a_folder_named_like_a_recipe_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. `nlseg demo --out-dir demo`
    assert load_config("demo").name == "demo"


def test_a_bad_value_through_the_cli_is_one_line_before_any_work(tmp_path, capsys):
    from nlseg.cli import main

    status = main(["train", "demo", "--work-dir", str(tmp_path / "w"), "--set", "eval.mode=slid", "train.iters=5"])
    err = capsys.readouterr().err
    assert status == 2
    assert err == "nlseg train: error: --set: eval.mode must be one of whole, slide, got 'slid' (did you mean 'slide'?)\n"
    assert not (tmp_path / "w" / "last.pt").exists()


@pytest.mark.parametrize("name", list_models())
def test_every_model_option_default_fits_its_declared_type(name):
    """The types that recipe values are checked against are those the builders declare: every default fits."""
    from nlseg.models.option_types import option_error, option_types

    types_ = option_types(name)
    assert set(types_) == set(model_options(name))
    for key, default in model_options(name).items():
        assert option_error(name, key, default) is None, (name, key, default)


def test_option_types_accept_what_yaml_gives_and_refuse_the_rest():
    from collections.abc import Sequence
    from typing import Literal

    from torch import nn

    from nlseg.models.option_types import matches

    assert matches([1, 2, 4], tuple[int, ...]) and matches(None, tuple[int, ...] | None)
    assert not matches([1, 2.5], tuple[int, ...]) and not matches("124", tuple[int, ...])
    assert matches(3, float) and not matches(float("nan"), float) and not matches(True, float)
    assert matches(["layer2", "layer3"], Sequence[str]) and not matches("layer3", Sequence[str])
    assert matches(nn.BatchNorm2d, type[nn.Module]) and not matches("bn", type[nn.Module]) and not matches(int, type[nn.Module])
    assert matches("a", Literal["a", "b"]) and not matches("c", Literal["a", "b"])
    assert matches(1, int) and not matches(True, int) and matches(False, bool) and not matches(0, bool)
