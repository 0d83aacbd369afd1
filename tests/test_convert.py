"""``nlseg convert``: the authors' released files (ANN ImageNet backbone, ANN checkpoint, Denoised NL state dict)
into files nlseg loads, on state dicts with the released names and shapes, written here from the released code's
module names; strict errors; convert -> ``nlseg eval``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_evaluate import write_cityscapes

import nlseg
from nlseg.backbones import create_backbone
from nlseg.cli import main
from nlseg.cli.convert import FORMATS as CLI_FORMATS
from nlseg.engine.convert import FORMATS

pytestmark = pytest.mark.numeric  # run again under other CPU kernels by .ci/run

# Narrow versions of the recipes' networks (same key names, every shape smaller), set with --set.
ANN_NARROW = ["model.options.backbone_width=8", "model.options.head_channels=16", "model.options.key_channels=4",
              "model.options.value_channels=4"]
DNL_NARROW = ["model.options.backbone_width=8", "model.options.head_channels=16", "model.options.key_channels=4"]

# Released module -> nlseg module, as read in the released code (MendelXu/ANN annn.py, apnb.py, afnb.py,
# resnet_models.py; maggiesong7/DenoisedNL model.py). BNReLU is Sequential(BN, ReLU), hence the ".0".
ANN_MODULES = {
    "backbone.prefix.conv1": "backbone.conv1.0", "backbone.prefix.bn1": "backbone.conv1.1",
    "backbone.prefix.conv2": "backbone.conv1.3", "backbone.prefix.bn2": "backbone.conv1.4",
    "backbone.prefix.conv3": "backbone.conv1.6", "backbone.prefix.bn3": "backbone.bn1",
    **{f"backbone.layer{i}": f"backbone.layer{i}" for i in range(1, 5)},
    "dsn.0": "aux_heads.layer3.0.0", "dsn.1.0": "aux_heads.layer3.0.1", "dsn.3": "aux_heads.layer3.2",
    "fusion.stages.0.f_key.0": "decoder.fusion.key.0", "fusion.stages.0.f_key.1.0": "decoder.fusion.key.1",
    "fusion.stages.0.f_query.0": "decoder.fusion.query.0", "fusion.stages.0.f_query.1.0": "decoder.fusion.query.1",
    "fusion.stages.0.f_value": "decoder.fusion.value", "fusion.stages.0.W": "decoder.fusion.out_proj",
    "fusion.conv_bn_dropout.0": "decoder.fusion.fuse.0.0", "fusion.conv_bn_dropout.1": "decoder.fusion.fuse.0.1",
    "context.0": "decoder.reduce.0", "context.1.0": "decoder.reduce.1",
    "context.2.stages.0.f_key.0": "decoder.context.key.0", "context.2.stages.0.f_key.1.0": "decoder.context.key.1",
    "context.2.stages.0.f_value": "decoder.context.value", "context.2.stages.0.W": "decoder.context.out_proj",
    "context.2.conv_bn_dropout.0": "decoder.context.fuse.0.0",
    "context.2.conv_bn_dropout.1.0": "decoder.context.fuse.0.1",
    "cls": "decoder.classifier",
}
ANN_CONV_BIASES = ("dsn.0", "fusion.stages.0.f_key.0", "fusion.stages.0.f_query.0", "fusion.conv_bn_dropout.0",
                   "context.0", "context.2.stages.0.f_key.0", "context.2.conv_bn_dropout.0")
"""Released convs with a bias (nn.Conv2d's default) where nlseg's conv has none; a BatchNorm follows each."""

DNL_MODULES = {
    "backbone": "backbone",
    "conv.0": "decoder.reduction.0.0", "conv.1": "decoder.reduction.0.1", "down_sample": "decoder.reduction.1",
    "dnl.conv1": "decoder.block.query", "dnl.conv2": "decoder.block.key", "dnl.conv3": "decoder.block.value",
    "dnl.gamma": "decoder.block.gamma", "dnl.conv.0": "decoder.fuse.0", "dnl.conv.1": "decoder.fuse.1",
    "dnl.conv_out3.conv.0": "aux_heads.layer3.0.0", "dnl.conv_out3.conv.1": "aux_heads.layer3.0.1",
    "dnl.conv_out3.conv.4": "aux_heads.layer3.2",
    "conv_out1.conv.0": "decoder.head.0.0", "conv_out1.conv.1": "decoder.head.0.1", "conv_out1.conv.4": "decoder.head.2",
    "conv_out2.conv.0": "aux_heads.layer2.0.0", "conv_out2.conv.1": "aux_heads.layer2.0.1",
    "conv_out2.conv.4": "aux_heads.layer2.2",
}

# The ANN ImageNet file (torchcv's ResNet, loaded into `prefix.*` by its loader): stem at the top level.
BACKBONE_MODULES = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6",
                    "bn3": "bn1", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}


def _released_name(name: str, modules: dict[str, str]) -> str:
    """nlseg key -> released key by the longest nlseg module prefix of ``modules``."""
    matches = [(old, new) for old, new in modules.items() if name == new or name.startswith(new + ".")]
    old, new = max(matches, key=lambda pair: len(pair[1]))
    return old + name[len(new):]


def released_state(model: torch.nn.Module, modules: dict[str, str], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the released layout, shaped after ``model`` (variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            new = torch.tensor(7)
        elif name.endswith("running_var"):
            new = torch.rand(value.shape, generator=gen) + 0.5
        else:
            new = torch.randn(value.shape, generator=gen) * 0.2
        state[_released_name(name, modules)] = new
    return state


def ann_released(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    state = released_state(model, ANN_MODULES, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for conv in ANN_CONV_BIASES:
        state[f"{conv}.bias"] = torch.randn(state[f"{conv}.weight"].shape[0], generator=gen)
    apnb = "context.2.stages.0."  # f_query is f_key: the same tensors under both names
    state.update({apnb + "f_query" + k[len(apnb + "f_key"):]: v for k, v in state.items() if k.startswith(apnb + "f_key")})
    return state


def dnl_released(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    state = released_state(model, DNL_MODULES, seed=seed)
    # interp is down_sample.downsample: the same tensors under both names
    state.update({"interp" + k[len("down_sample.downsample"):]: v
                  for k, v in state.items() if k.startswith("down_sample.downsample.")})
    return state


def _model(name: str, narrow: list[str], **options) -> torch.nn.Module:
    opts = {item.split("=")[0].split(".")[-1]: int(item.split("=")[1]) for item in narrow}
    return nlseg.create_model(name, num_classes=19, **opts, **options)


@pytest.fixture(scope="module")
def ann_model() -> torch.nn.Module:
    return _model("ann_r101", ANN_NARROW, stem="deep", stem_ceil_mode=True)


@pytest.fixture(scope="module")
def dnl_model() -> torch.nn.Module:
    return _model("denoised_nl_r101", DNL_NARROW, global_context=False)


def _ann_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """As the ANN runner saves it: DataParallel's module. prefix, its config and a numpy score."""
    torch.save({"config_dict": {"network": {"model_name": "annn"}},
                "state_dict": {f"module.{k}": v for k, v in state.items()},
                "runner_state": {"iters": 60000, "performance": np.float64(0.799)}}, path)
    return path


def _convert(*args: str) -> int:
    return main(["convert", *args])


def test_formats_named_once():
    assert FORMATS == ("ann-backbone", "ann", "dnl")
    assert CLI_FORMATS == (*FORMATS, "mmseg")  # mmseg: its own module, nlseg.engine.convert_mmseg


def test_ann_checkpoint_converts_exactly(tmp_path: Path, ann_model, capsys):
    state = ann_released(ann_model)
    src, out = _ann_file(tmp_path / "fs_annn_cityscapes_segohem_latest.pth", state), tmp_path / "ann.pt"
    assert _convert("ann", str(src), "--out", str(out), "--set", *ANN_NARROW) == 0
    assert "nlseg eval ann_r101_cityscapes --checkpoint" in capsys.readouterr().out
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model_name"] == "ann_r101" and ckpt["num_classes"] == 19 and ckpt["class_names"][0] == "road"
    assert ckpt["config"]["data"]["normalize"] == "caffe"
    assert ckpt["config"]["model"]["options"]["stem"] == "deep" and ckpt["config"]["model"]["options"]["stem_ceil_mode"]
    weights = ckpt["model"]
    assert set(weights) == set(ann_model.state_dict())  # nothing left unset, nothing extra
    assert torch.equal(weights["backbone.conv1.6.weight"], state["backbone.prefix.conv3.weight"])
    assert torch.equal(weights["backbone.bn1.running_var"], state["backbone.prefix.bn3.running_var"])
    assert torch.equal(weights["decoder.fusion.query.0.weight"], state["fusion.stages.0.f_query.0.weight"])
    assert torch.equal(weights["decoder.context.out_proj.bias"], state["context.2.stages.0.W.bias"])
    assert torch.equal(weights["backbone.layer3.22.bn2.num_batches_tracked"], torch.tensor(7))
    # folded: running mean minus the conv's bias
    assert torch.equal(weights["decoder.reduce.1.running_mean"], state["context.1.0.running_mean"] - state["context.0.bias"])
    assert torch.equal(weights["decoder.reduce.1.running_var"], state["context.1.0.running_var"])


def test_folded_bias_gives_the_eval_output_of_the_explicit_bias(tmp_path: Path, ann_model):
    """conv3x3(+bias) -> BN in the released network equals nlseg's conv3x3 -> BN with the folded mean (eval)."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in ann_released(ann_model, seed=3).items()}
    out = tmp_path / "ann.pt"
    assert _convert("ann", str(_ann_file(tmp_path / "a.pth", state)), "--out", str(out), "--set", *ANN_NARROW) == 0
    model = _model("ann_r101", ANN_NARROW, stem="deep", stem_ceil_mode=True).double().eval()
    model.load_state_dict(torch.load(out, weights_only=True)["model"])
    x = torch.randn(2, ann_model.backbone.out_channels, 5, 7, dtype=torch.float64)
    s = state
    released = F.relu(F.batch_norm(
        F.conv2d(x, s["context.0.weight"], s["context.0.bias"], padding=1),
        s["context.1.0.running_mean"], s["context.1.0.running_var"], s["context.1.0.weight"], s["context.1.0.bias"],
    ))
    torch.testing.assert_close(model.decoder.reduce(x), released, rtol=1e-13, atol=1e-13)
    copied = F.relu(F.batch_norm(  # the running mean copied as it is, the bias dropped: another function
        F.conv2d(x, s["context.0.weight"], padding=1),
        s["context.1.0.running_mean"], s["context.1.0.running_var"], s["context.1.0.weight"], s["context.1.0.bias"],
    ))
    assert (released - copied).abs().max() > 1e-2


def test_dnl_state_dict_converts_exactly(tmp_path: Path, dnl_model):
    state = dnl_released(dnl_model)
    src, out = tmp_path / "dnl.pth", tmp_path / "dnl.pt"
    torch.save(state, src)
    assert _convert("dnl", str(src), "--out", str(out), "--set", *DNL_NARROW) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model_name"] == "denoised_nl_r101" and ckpt["config"]["model"]["options"]["global_context"] is False
    assert ckpt["config"]["data"]["normalize"] == "imagenet"
    weights = ckpt["model"]
    assert set(weights) == set(dnl_model.state_dict())
    # q = conv1(x), k = conv2(x) in the released DNL; its class map is conv_out3 on layer3
    assert torch.equal(weights["decoder.block.query.weight"], state["dnl.conv1.weight"])
    assert torch.equal(weights["decoder.block.key.weight"], state["dnl.conv2.weight"])
    assert torch.equal(weights["decoder.block.gamma"], state["dnl.gamma"])
    assert torch.equal(weights["aux_heads.layer3.2.bias"], state["dnl.conv_out3.conv.4.bias"])
    assert torch.equal(weights["decoder.reduction.1.downsample.0.weight"], state["interp.0.weight"])
    model = _model("denoised_nl_r101", DNL_NARROW, global_context=False)
    model.load_state_dict(weights)  # strict
    with torch.no_grad():
        out_a = model.eval()(torch.randn(1, 3, 33, 49))
    assert out_a["out"].shape == (1, 19, 33, 49) and torch.isfinite(out_a["out"]).all()


def test_counters_absent_in_the_file_start_at_zero(tmp_path: Path, dnl_model):
    state = {k: v for k, v in dnl_released(dnl_model).items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, tmp_path / "dnl.pth")
    assert _convert("dnl", str(tmp_path / "dnl.pth"), "--out", str(tmp_path / "o.pt"), "--set", *DNL_NARROW) == 0
    weights = torch.load(tmp_path / "o.pt", weights_only=True)["model"]
    assert int(weights["backbone.bn1.num_batches_tracked"]) == 0


def test_ann_backbone_file_loads_as_pretrained_backbone(tmp_path: Path):
    backbone = create_backbone("resnet50", stem="deep", width=8)
    state = released_state(backbone, BACKBONE_MODULES)
    state.update({"fc.weight": torch.zeros(1000, 256), "fc.bias": torch.zeros(1000)})  # torchcv's classifier
    src, out = tmp_path / "3x3resnet50-imagenet.pth", tmp_path / "backbone.pth"
    torch.save(state, src)
    assert _convert("ann-backbone", str(src), "--out", str(out)) == 0
    model = nlseg.create_model("ann_r50", num_classes=19, stem="deep", backbone_width=8, head_channels=16,
                               key_channels=4, value_channels=4, pretrained_backbone=out)
    assert torch.equal(model.backbone.conv1[3].weight, state["conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_mean, state["bn3.running_mean"])
    assert torch.equal(model.backbone.layer3[5].conv3.weight, state["layer3.5.conv3.weight"])
    # the same file under the `prefix.` names the ANN model's backbone has
    torch.save({("prefix." + k if k[:4] in ("conv", "bn1.", "bn2.", "bn3.") else k): v for k, v in state.items()}, src)
    assert _convert("ann-backbone", str(src), "--out", str(out), "--overwrite") == 0
    assert torch.equal(torch.load(out, weights_only=True)["conv1.3.weight"], state["conv2.weight"])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nlseg convert: error: "), err
    return err


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.pop("cls.bias"), "missing from the file (1): cls.bias"),
        (lambda s: s.pop("context.0.bias"), "missing from the file (1): context.0.bias"),
        (lambda s: s.pop("context.2.stages.0.f_query.1.0.running_var"),
         "missing from the file (1): context.2.stages.0.f_query.1.0.running_var"),
        (lambda s: s.update({"head.extra.weight": torch.zeros(3)}), "unexpected in the file (1): head.extra.weight"),
        (lambda s: s.update({"cls.weight": torch.zeros(20, 16, 1, 1)}),
         "shape mismatches (file vs model) (1): cls.weight (20, 16, 1, 1) vs decoder.classifier.weight (19, 16, 1, 1)"),
        (lambda s: s.update({"context.2.stages.0.f_query.0.weight": torch.zeros(4, 16, 1, 1)}),
         "repeated modules that differ (1): context.2.stages.0.f_query.0.weight differs from "
         "context.2.stages.0.f_key.0.weight"),
    ],
)
def test_a_file_that_does_not_fit_is_one_line_and_writes_nothing(tmp_path: Path, ann_model, capsys, change, expected):
    state = ann_released(ann_model)
    change(state)
    out = tmp_path / "ann.pt"
    assert _convert("ann", str(_ann_file(tmp_path / "a.pth", state)), "--out", str(out), "--set", *ANN_NARROW) == 2
    err = _error(capsys)
    assert expected in err and "does not fit ann_r101 (19 classes, recipe ann_r101_cityscapes)" in err
    assert not out.exists()


def test_a_full_width_recipe_names_both_shapes(tmp_path: Path, ann_model, capsys):
    src = _ann_file(tmp_path / "a.pth", ann_released(ann_model))
    assert _convert("ann", str(src), "--out", str(tmp_path / "o.pt")) == 2
    err = _error(capsys)
    assert "backbone.prefix.conv1.weight (8, 3, 3, 3) vs backbone.conv1.0.weight (64, 3, 3, 3)" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        ([torch.zeros(2)], "holds a list; expected a state dict"),
        ({"state_dict": {"a.weight": "text"}}, "found entry 'a.weight' of type str"),
        ({"epoch": 3}, "found entry 'epoch' of type int"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, capsys, content, expected):
    torch.save(content, tmp_path / "x.pth")
    assert _convert("dnl", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o.pt")) == 2
    assert expected in _error(capsys)


def test_text_file_and_missing_file(tmp_path: Path, capsys):
    (tmp_path / "notes.pth").write_text("not weights")
    assert _convert("ann-backbone", str(tmp_path / "notes.pth"), "--out", str(tmp_path / "o.pth")) == 2
    assert "cannot be read as a PyTorch file" in _error(capsys)
    assert _convert("ann-backbone", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o.pth")) == 2
    assert "none.pth does not exist" in _error(capsys)


def test_existing_output_needs_overwrite(tmp_path: Path, dnl_model, capsys):
    torch.save(dnl_released(dnl_model), tmp_path / "dnl.pth")
    out = tmp_path / "dnl.pt"
    out.write_bytes(b"keep me")
    assert _convert("dnl", str(tmp_path / "dnl.pth"), "--out", str(out), "--set", *DNL_NARROW) == 2
    assert "exists; pass --overwrite to replace it" in _error(capsys) and out.read_bytes() == b"keep me"
    assert _convert("dnl", str(tmp_path / "dnl.pth"), "--out", str(out), "--overwrite", "--set", *DNL_NARROW) == 0
    assert "model" in torch.load(out, weights_only=True)


def test_recipe_for_another_model_is_refused(tmp_path: Path, dnl_model, capsys):
    torch.save(dnl_released(dnl_model), tmp_path / "dnl.pth")
    assert _convert("dnl", str(tmp_path / "dnl.pth"), "--out", str(tmp_path / "o.pt"), "--recipe", "fcn_r101_cityscapes") == 2
    assert "builds 'fcn_r101'; the dnl format converts into denoised_nl_r18, denoised_nl_r50, denoised_nl_r101" in _error(capsys)
    assert _convert("ann-backbone", str(tmp_path / "dnl.pth"), "--out", str(tmp_path / "o.pt"), "--recipe", "ann_r101_cityscapes") == 2
    assert "takes no --recipe" in _error(capsys)


def test_convert_then_eval(tmp_path: Path, ann_model, capsys):
    """The user's path: the released ANN checkpoint -> nlseg convert -> nlseg eval, with the file's classifier."""
    state = ann_released(ann_model)
    state["cls.weight"] = torch.zeros_like(state["cls.weight"])
    state["cls.bias"] = torch.full((19,), -5.0)
    state["cls.bias"][13] = 5.0  # the main head says "car" everywhere
    out = tmp_path / "ann.pt"
    assert _convert("ann", str(_ann_file(tmp_path / "a.pth", state)), "--out", str(out), "--set", *ANN_NARROW) == 0
    rng = np.random.default_rng(0)
    labels = {stem: rng.choice([7, 8, 26, 0], size=(33, 49)) for stem in ("frankfurt_000000_000294", "lindau_000001_000019")}
    write_cityscapes(tmp_path / "cs", "val", {stem: (np.zeros((33, 49), dtype=np.int64), ids) for stem, ids in labels.items()})
    metrics_file = tmp_path / "metrics.json"
    assert main(["eval", "ann_r101_cityscapes", "--checkpoint", str(out), "--device", "cpu", "--out", str(metrics_file),
                 "--set", f"data.root={tmp_path / 'cs'}"]) == 0
    metrics = __import__("json").loads(metrics_file.read_text())
    ids = np.stack(list(labels.values()))
    valid, car = (ids != 0).sum(), (ids == 26).sum()
    # car is predicted on every valid pixel: IoU(car) = car / valid; road and sidewalk 0
    assert metrics["mIoU"] == pytest.approx(100 * (car / valid) / 3)
    assert metrics["aAcc"] == pytest.approx(100 * car / valid)


@pytest.mark.parametrize("updates", [2, 1])
def test_apnb_shared_norm_statistics_move_as_released(updates: int):
    """The released APNB runs its shared key/query conv + BN twice per forward (f_query is f_key), so in training
    the running statistics take two momentum steps with the same batch; ``shared_norm_updates=1`` takes one."""
    block = nlseg.create_block("apnb", 8, key_channels=4, value_channels=4, shared_norm_updates=updates).double().train()
    norm = block.key[1]
    with torch.no_grad():
        norm.running_mean.fill_(1.0)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    batch_mean = block.key[0](x).mean(dim=(0, 2, 3))
    block(x)
    expected = torch.ones(4, dtype=torch.float64)
    for _ in range(updates):
        expected = 0.9 * expected + 0.1 * batch_mean
    torch.testing.assert_close(norm.running_mean, expected.detach(), rtol=1e-12, atol=1e-12)
