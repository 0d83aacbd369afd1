"""``nlseg convert mmseg``: mmsegmentation checkpoints of NLHead, DAHead, PSPHead and ASPPHead networks -> nlseg's
``*_head_*`` models. The key names and shapes are mmsegmentation 1.2.2's own, recorded at width 8 by
``benchmarks/mmseg_convert_check.py keys`` (tests/golden/mmseg_keys.json); mmsegmentation is not imported here.
The same script's ``write`` / ``check`` steps compare the converted R-50 networks with mmsegmentation itself
(max |difference| / max |logit| <= 3.3e-7 for all four, float32; see docs/models.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nlseg.cli import main
from nlseg.config import load_config
from nlseg.engine.convert_mmseg import convert_mmseg, mmseg_recipe
from nlseg.engine.inference import build_model_from_checkpoint
from nlseg.errors import CheckpointError, ConfigError
from nlseg.models import create_model

KEYS = json.loads((Path(__file__).parent / "golden" / "mmseg_keys.json").read_text())
NARROW = ["model.options.backbone_width=8", "model.options.head_channels=16"]
HEADS = ("nl", "danet", "ppm", "aspp")


def mmseg_state(head: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under mmsegmentation's names and shapes (BN counters 7)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {**KEYS["backbone"], **KEYS[head]}
    return {k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=generator)
            for k, s in shapes.items()}


def save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": state}, path)  # as mmengine's runner saves
    return path


# (mmsegmentation name, nlseg name): written from mmseg's and mmcv's module definitions
SHARED = [
    ("backbone.stem.0.weight", "backbone.conv1.0.weight"),
    ("backbone.stem.4.running_var", "backbone.conv1.4.running_var"),
    ("backbone.stem.6.weight", "backbone.conv1.6.weight"),
    ("backbone.stem.7.running_mean", "backbone.bn1.running_mean"),
    ("backbone.layer3.5.conv2.weight", "backbone.layer3.5.conv2.weight"),
    ("backbone.layer4.0.downsample.1.weight", "backbone.layer4.0.downsample.1.weight"),
    ("auxiliary_head.convs.0.conv.weight", "aux_heads.layer3.0.0.weight"),
    ("auxiliary_head.convs.0.bn.bias", "aux_heads.layer3.0.1.bias"),
    ("auxiliary_head.conv_seg.bias", "aux_heads.layer3.2.bias"),
    ("decode_head.conv_seg.weight", "decoder.classifier.weight"),
]
PAIRS = {
    "nl": [("decode_head.convs.0.conv.weight", "decoder.head.inner.0.0.weight"),
           ("decode_head.nl_block.theta.conv.weight", "decoder.head.inner.1.query.weight"),
           ("decode_head.nl_block.phi.conv.bias", "decoder.head.inner.1.key.bias"),
           ("decode_head.nl_block.g.conv.weight", "decoder.head.inner.1.value.weight"),
           ("decode_head.nl_block.conv_out.bn.weight", "decoder.head.inner.1.out_proj.1.weight"),
           ("decode_head.convs.1.bn.running_mean", "decoder.head.inner.2.1.running_mean"),
           ("decode_head.conv_cat.conv.weight", "decoder.head.fuse.0.weight")],
    "danet": [("decode_head.pam_in_conv.conv.weight", "decoder.head.position.0.0.weight"),
              ("decode_head.pam.query_project.weight", "decoder.head.position.1.query.weight"),
              ("decode_head.pam.key_project.bias", "decoder.head.position.1.key.bias"),
              ("decode_head.pam.value_project.weight", "decoder.head.position.1.value.weight"),
              ("decode_head.cam_out_conv.bn.running_var", "decoder.head.channel.2.1.running_var")],
    "ppm": [("decode_head.psp_modules.0.1.conv.weight", "decoder.head.branches.0.0.weight"),
            ("decode_head.psp_modules.3.1.bn.bias", "decoder.head.branches.3.1.bias"),
            ("decode_head.bottleneck.conv.weight", "decoder.head.bottleneck.0.weight")],
    "aspp": [("decode_head.aspp_modules.0.conv.weight", "decoder.head.branches.0.0.weight"),
             ("decode_head.aspp_modules.3.bn.weight", "decoder.head.branches.3.1.weight"),
             ("decode_head.image_pool.1.conv.weight", "decoder.head.image_pool.0.weight"),
             ("decode_head.bottleneck.bn.running_mean", "decoder.head.project.0.1.running_mean")],
}


@pytest.mark.parametrize("head", HEADS)
def test_every_mmseg_tensor_lands_in_its_nlseg_place_unchanged(head: str, tmp_path: Path) -> None:
    state = mmseg_state(head)
    source = save(tmp_path / f"{head}.pth", state)
    assert mmseg_recipe(source) == f"{head}_head_r50_cityscapes"
    converted = convert_mmseg(source, load_config(mmseg_recipe(source), NARROW))
    assert converted["model_name"] == f"{head}_head_r50" and converted["converted_from"]["format"] == "mmseg"
    weights = converted["model"]
    model = create_model(f"{head}_head_r50", num_classes=19, backbone_width=8, head_channels=16)
    model.load_state_dict(weights)  # strict: every key of the model, nothing else
    for mmseg_name, nlseg_name in SHARED + PAIRS[head]:
        assert torch.equal(weights[nlseg_name], state[mmseg_name]), (mmseg_name, nlseg_name)
    assert int(weights["backbone.bn1.num_batches_tracked"]) == 7
    branch_classifiers = ("decode_head.pam_conv_seg.", "decode_head.cam_conv_seg.")  # DANet's, training only
    used = sum(v.numel() for k, v in state.items() if not k.startswith(branch_classifiers))
    assert used == sum(v.numel() for v in weights.values())  # every other value is in the model
    if head == "danet":  # mmcv's Scale is a 0-d tensor, nlseg's gamma (1,)
        for branch, name in (("pam", "position"), ("cam", "channel")):
            gamma = state[f"decode_head.{branch}.gamma.scale"]
            assert gamma.dim() == 0 and weights[f"decoder.head.{name}.1.gamma"].tolist() == [gamma.item()]


def test_aspp_bottleneck_reads_the_image_pool_last_as_nlseg_concatenates(tmp_path: Path) -> None:
    """mmseg: bottleneck(cat(pool, b0..b3)); nlseg: project(cat(b0..b3, pool)); the same numbers out."""
    state = mmseg_state("aspp")
    source = save(tmp_path / "aspp.pth", state)
    weights = convert_mmseg(source, load_config("aspp_head_r50_cityscapes", NARROW))["model"]
    pool, *branches = torch.randn(5, 1, 16, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theirs_weight, our_weight = (w.double() for w in (state["decode_head.bottleneck.conv.weight"],
                                                      weights["decoder.head.project.0.0.weight"]))
    theirs = F.conv2d(torch.cat([pool, *branches], 1), theirs_weight, padding=1)
    ours = F.conv2d(torch.cat([*branches, pool], 1), our_weight, padding=1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)  # float64: only the summation order differs
    unpermuted = F.conv2d(torch.cat([*branches, pool], 1), theirs_weight, padding=1)
    assert (unpermuted - theirs).abs().max() > 1.0  # the permutation matters


def test_files_that_do_not_fit_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    state = mmseg_state("nl")
    extra = save(tmp_path / "extra.pth", {**state, "decode_head.nl_block.extra.weight": torch.zeros(1)})
    missing = save(tmp_path / "missing.pth", {k: v for k, v in state.items() if "theta" not in k})
    other = save(tmp_path / "other.pth", {k: v for k, v in state.items() if not k.startswith("decode_head.nl_block")})
    cfg = load_config("nl_head_r50_cityscapes", NARROW)
    with pytest.raises(CheckpointError, match=r"unexpected in the file \(1\): decode_head\.nl_block\.extra\.weight"):
        convert_mmseg(extra, cfg)
    with pytest.raises(CheckpointError, match=r"missing from the file \(2\): decode_head\.nl_block\.theta\.conv"):
        convert_mmseg(missing, cfg)
    with pytest.raises(CheckpointError, match=r"not an mmsegmentation NLHead, DAHead, PSPHead or ASPPHead"):
        convert_mmseg(other, cfg)
    with pytest.raises(ConfigError, match=r"nl network on ResNet-50; recipe ppm_head_r50_cityscapes builds"):
        convert_mmseg(save(tmp_path / "nl.pth", state), load_config("ppm_head_r50_cityscapes", NARROW))
    out = tmp_path / "out.pt"
    assert main(["convert", "mmseg", str(missing), "--out", str(out), "--set", *NARROW]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out.exists()


def test_cli_writes_a_checkpoint_that_eval_rebuilds(tmp_path: Path, capsys) -> None:
    state = mmseg_state("danet", seed=2)
    source = save(tmp_path / "danet_r50.pth", state)
    out = tmp_path / "danet.pt"
    assert main(["convert", "mmseg", str(source), "--out", str(out), "--set", *NARROW]) == 0
    printed = capsys.readouterr().out
    assert "danet_head_r50 with 19 classes" in printed and "nlseg eval danet_head_r50_cityscapes" in printed
    model, saved = build_model_from_checkpoint(out)
    assert saved["converted_from"] == {"file": str(source), "format": "mmseg"}
    torch.testing.assert_close(model.state_dict()["decoder.head.position.1.query.weight"],
                               state["decode_head.pam.query_project.weight"], rtol=0, atol=0)
