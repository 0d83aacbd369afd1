"""``nlseg convert mmseg``: mmsegmentation checkpoints of NLHead, DAHead, PSPHead, ASPPHead, ANNHead, CCHead and
FCNHead networks -> nlseg's ``*_head_*`` models. The key names and shapes are mmsegmentation 1.2.2's own, recorded
at width 8 by ``benchmarks/mmseg_convert_check.py keys`` (tests/golden/mmseg_keys.json); mmsegmentation is not
imported here. The same script's ``write`` / ``check`` steps compare the converted R-50 networks with
mmsegmentation itself (float32 logits; see docs/models.md for the measured differences)."""
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
HEADS = ("nl", "danet", "ppm", "aspp", "ann", "ccnet", "fcn")
APNB_ALIAS = ("decode_head.context.stages.0.query_project.", "decode_head.context.stages.0.key_project.")
"""mmsegmentation's APNB registers its one key/query projection under two names; the file holds it twice."""


def mmseg_state(head: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under mmsegmentation's names and shapes (BN counters 7)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {**KEYS["backbone"], **KEYS[head]}
    state = {k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=generator)
             for k, s in shapes.items()}
    alias, original = APNB_ALIAS
    return {k: state[original + k[len(alias):]] if k.startswith(alias) else v for k, v in state.items()}


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
    "ann": [("decode_head.fusion.stages.0.query_project.conv.weight", "decoder.fusion.query.0.weight"),
            ("decode_head.fusion.stages.0.key_project.bn.running_var", "decoder.fusion.key.1.running_var"),
            ("decode_head.fusion.stages.0.value_project.bias", "decoder.fusion.value.bias"),
            ("decode_head.fusion.stages.0.out_project.weight", "decoder.fusion.out_proj.weight"),
            ("decode_head.fusion.bottleneck.bn.weight", "decoder.fusion.fuse.0.1.weight"),
            ("decode_head.bottleneck.conv.weight", "decoder.reduce.0.weight"),
            ("decode_head.context.stages.0.key_project.conv.weight", "decoder.context.key.0.weight"),
            ("decode_head.context.stages.0.query_project.bn.bias", "decoder.context.key.1.bias"),
            ("decode_head.context.stages.0.value_project.weight", "decoder.context.value.weight"),
            ("decode_head.context.stages.0.out_project.bias", "decoder.context.out_proj.bias"),
            ("decode_head.context.bottleneck.conv.weight", "decoder.context.fuse.0.0.weight")],
    "ccnet": [("decode_head.convs.0.conv.weight", "decoder.head.reduce.0.weight"),
              ("decode_head.cca.query_conv.weight", "decoder.head.attention.query.weight"),
              ("decode_head.cca.key_conv.bias", "decoder.head.attention.key.bias"),
              ("decode_head.cca.value_conv.weight", "decoder.head.attention.value.weight"),
              ("decode_head.convs.1.bn.running_mean", "decoder.head.expand.1.running_mean"),
              ("decode_head.conv_cat.conv.weight", "decoder.head.bottleneck.0.0.weight")],
    "fcn": [("decode_head.convs.0.conv.weight", "decoder.head.inner.0.0.weight"),
            ("decode_head.convs.1.bn.weight", "decoder.head.inner.1.1.weight"),
            ("decode_head.conv_cat.conv.weight", "decoder.head.fuse.0.weight")],
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
    # DANet's branch classifiers (training only) and APNB's second name for its key/query projection
    not_used = ("decode_head.pam_conv_seg.", "decode_head.cam_conv_seg.", APNB_ALIAS[0])
    used = sum(v.numel() for k, v in state.items() if not k.startswith(not_used))
    assert used == sum(v.numel() for v in weights.values())  # every other value is in the model
    gammas = {"danet": [("decode_head.pam.gamma.scale", "decoder.head.position.1.gamma"),
                        ("decode_head.cam.gamma.scale", "decoder.head.channel.1.gamma")],
              "ccnet": [("decode_head.cca.gamma.scale", "decoder.head.attention.gamma")]}
    for mmseg_name, nlseg_name in gammas.get(head, []):  # mmcv's Scale is a 0-d tensor, nlseg's gamma (1,)
        gamma = state[mmseg_name]
        assert gamma.dim() == 0 and weights[nlseg_name].tolist() == [gamma.item()]


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
    other = save(tmp_path / "other.pth", {k: v for k, v in state.items()
                                          if not k.startswith("decode_head.") or k.startswith("decode_head.conv_seg")})
    cfg = load_config("nl_head_r50_cityscapes", NARROW)
    with pytest.raises(CheckpointError, match=r"unexpected in the file \(1\): decode_head\.nl_block\.extra\.weight"):
        convert_mmseg(extra, cfg)
    with pytest.raises(CheckpointError, match=r"missing from the file \(2\): decode_head\.nl_block\.theta\.conv"):
        convert_mmseg(missing, cfg)
    with pytest.raises(CheckpointError, match=r"not an mmsegmentation NLHead, DAHead, PSPHead, ASPPHead, ANNHead, "
                       r"CCHead or FCNHead checkpoint"):
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


def test_nl_file_without_its_block_is_an_fcn_file(tmp_path: Path) -> None:
    """NLHead is FCNHead (two convs, concat_input) with a non-local block between the convs: its other keys are
    FCNHead's, so the head is told by the block's keys, and a file without them is read as FCN."""
    nl = mmseg_state("nl")
    fcn = {k: v for k, v in nl.items() if not k.startswith("decode_head.nl_block.")}
    assert set(fcn) == set(KEYS["backbone"]) | set(KEYS["fcn"])
    assert mmseg_recipe(save(tmp_path / "fcn.pth", fcn)) == "fcn_head_r50_cityscapes"
    assert mmseg_recipe(save(tmp_path / "nl.pth", nl)) == "nl_head_r50_cityscapes"
    assert mmseg_recipe(save(tmp_path / "cc.pth", mmseg_state("ccnet"))) == "ccnet_head_r50_cityscapes"


def test_apnb_key_and_query_are_one_module_in_the_file_or_it_is_refused(tmp_path: Path) -> None:
    state = mmseg_state("ann")
    cfg = load_config("ann_head_r50_cityscapes", NARROW)
    weights = convert_mmseg(save(tmp_path / "ann.pth", state), cfg)["model"]
    assert not any(".query" in k for k in weights if k.startswith("decoder.context."))  # nlseg keeps it once
    query = "decode_head.context.stages.0.query_project.conv.weight"
    edited = {**state, query: state[query] + 1}
    with pytest.raises(CheckpointError, match=r"repeated modules that differ \(1\): " + query.replace(".", r"\.")):
        convert_mmseg(save(tmp_path / "edited.pth", edited), cfg)


def test_ann_head_computes_the_fusion_and_context_as_written_in_mmsegmentation(tmp_path: Path) -> None:
    """ANNHead's forward written out from mmsegmentation's SelfAttentionBlock (query/key/value projections, pyramid
    pooling of key and value, softmax(q k^T / sqrt(Ck)), out projection, bottleneck on cat(context, input)) on the
    converted tensors, float64, against nlseg's ann_head_r50 decoder."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in mmseg_state("ann", seed=4).items()}
    state = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in state.items()}
    model = create_model("ann_head_r50", num_classes=19, backbone_width=8, head_channels=16).double().eval()
    model.load_state_dict(convert_mmseg(save(tmp_path / "ann.pth", state), load_config("ann_head_r50_cityscapes",
                                                                                       NARROW))["model"])
    generator = torch.Generator().manual_seed(5)
    low, high = (torch.randn(1, c, 6, 9, generator=generator, dtype=torch.float64) for c in (128, 256))

    def module(prefix: str, x: torch.Tensor, act: bool = True, padding: int = 0) -> torch.Tensor:
        x = F.conv2d(x, state[f"{prefix}.conv.weight"], padding=padding)
        x = F.batch_norm(x, state[f"{prefix}.bn.running_mean"], state[f"{prefix}.bn.running_var"],
                         state[f"{prefix}.bn.weight"], state[f"{prefix}.bn.bias"], eps=1e-5)
        return F.relu(x) if act else x

    def attention(prefix: str, query_x: torch.Tensor, key_x: torch.Tensor) -> torch.Tensor:
        pooled = lambda t: torch.cat([F.adaptive_avg_pool2d(t, n).flatten(2) for n in (1, 3, 6, 8)], 2)  # noqa: E731
        q = module(f"{prefix}.query_project", query_x).flatten(2).transpose(1, 2)  # (B, N, Ck)
        k = pooled(module(f"{prefix}.key_project", key_x))  # (B, Ck, S)
        v = pooled(F.conv2d(key_x, state[f"{prefix}.value_project.weight"], state[f"{prefix}.value_project.bias"]))
        context = torch.softmax(q @ k / k.shape[1] ** 0.5, -1) @ v.transpose(1, 2)  # (B, N, Cv)
        context = context.transpose(1, 2).reshape(1, -1, *query_x.shape[-2:])
        return F.conv2d(context, state[f"{prefix}.out_project.weight"], state[f"{prefix}.out_project.bias"])

    fused = module("decode_head.fusion.bottleneck",
                   torch.cat([attention("decode_head.fusion.stages.0", high, low), high], 1), act=False)
    x = module("decode_head.bottleneck", fused, padding=1)
    x = module("decode_head.context.bottleneck", torch.cat([attention("decode_head.context.stages.0", x, x), x], 1))
    theirs = F.conv2d(x, state["decode_head.conv_seg.weight"], state["decode_head.conv_seg.bias"])
    with torch.no_grad():
        ours = model.decoder({"layer3": low, "layer4": high}, {})
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)  # float64: only the order of sums differs


def test_dnl_head_is_recognised_and_refused_in_one_line(tmp_path: Path, capsys) -> None:
    """mmsegmentation's DNLHead (dnlnet) is NLHead's layout with ``dnl_block`` (theta, phi, g, conv_out as
    NonLocal2d, plus a 1-channel ``conv_mask``): the Disentangled Non-Local block, not the Denoised NL one."""
    nl = mmseg_state("nl")
    dnl = {k.replace("decode_head.nl_block.", "decode_head.dnl_block."): v for k, v in nl.items()}
    dnl["decode_head.dnl_block.conv_mask.weight"] = torch.randn(1, 16, 1, 1)
    dnl["decode_head.dnl_block.conv_mask.bias"] = torch.randn(1)
    source = save(tmp_path / "dnl_r50-d8.pth", dnl)
    out = tmp_path / "out.pt"
    assert main(["convert", "mmseg", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out.exists()
    for words in (str(source), "is mmsegmentation's DNLHead", "Disentangled Non-Local", "not nlseg's denoised_nl_*",
                  "whitened query and key", "temperature of 0.05", "unary branch (conv_mask"):
        assert words in err, words
    with pytest.raises(CheckpointError, match="DNLHead"):
        convert_mmseg(source, load_config("nl_head_r50_cityscapes", NARROW))
