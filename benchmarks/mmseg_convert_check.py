"""`nlseg convert mmseg` against mmsegmentation itself: same weights, same input, same logits.

Two steps, one per virtual env (mmsegmentation is never imported by nlseg or its tests):

    .venv-mmseg/bin/python benchmarks/mmseg_convert_check.py write DIR   # mmseg: random networks, inputs, logits
    .venv/bin/python benchmarks/mmseg_convert_check.py check DIR         # nlseg: convert, run, compare

and, for tests/test_convert_mmseg.py, the key names and shapes of the same networks at width 8 (the stem
4-4-8, heads 16 channels, PAM 2, ANN's projections 8), which the test converts without mmsegmentation:

    .venv-mmseg/bin/python benchmarks/mmseg_convert_check.py keys tests/golden/mmseg_keys.json

`write` builds mmsegmentation 1.2.2's NLHead, DAHead, PSPHead, ASPPHead, ANNHead, CCHead and FCNHead networks on
ResNet-50-d8 (Cityscapes configs, BN for SyncBN), fills every parameter with random values and every BatchNorm
statistic with randomly perturbed statistics of random images (:func:`_randomise`: no block is an identity, no
norm a no-op, logits of order 1-10), and saves each checkpoint as mmseg does (``{"meta",
"state_dict"}``) with a random 1x3x64x96 input and the eval-mode decode and auxiliary logits (1/8 scale).
`check` converts each checkpoint with ``nlseg.engine.convert_mmseg`` (the recipe chosen from the file), loads it
into the nlseg model and prints, for both logits, max |nlseg - mmseg|, that over max |mmseg|, and the share of
positions whose arg-max class differs. (`.venv-mmseg` is made by benchmarks/mmseg_env.sh.)

CCHead: mmseg builds its attention from ``mmcv.ops.CrissCrossAttention``, which mmcv-lite cannot import (the
package ``mmcv.ops`` needs the compiled extension). :class:`CrissCrossStandIn`, written here from CCNet's
definition, takes its place on the mmseg side with the same parameter names (``query_conv``, ``key_conv``,
``value_conv``, ``gamma.scale``). `write` saves one random q, k, v and the stand-in's attention on them, and
`check` compares that with nlseg's ``criss_cross_attention_reference``; where mmcv-lite ships the pure-PyTorch
source file ``mmcv/ops/cc_attention.py``, `write` also loads that file alone and compares the stand-in with it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the vs-mmseg parts
from vsmmseg.mmseg_side import no_sync_bn  # noqa: E402

CONFIGS = {
    "nl": "nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "danet": "danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ppm": "pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "aspp": "deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ann": "ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ccnet": "ccnet/ccnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "fcn": "fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py",
}
SIZE = (64, 96)


def criss_cross(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """CCNet's criss-cross attention (Huang et al., ICCV 2019, Eq. 1-2), as mmcv defines it: position (h, w)
    scores the H positions of its column, itself excluded, and the W of its row, itself included (so it is
    counted once); one softmax over those H + W scores, no scale; the values at the same positions, weighted.
    q, k (B, Ck, H, W), v (B, C, H, W) -> (B, C, H, W)."""
    height = q.shape[2]
    column = torch.einsum("bcyx,bcix->byxi", q, k)  # (B, H, W, H): against (i, x)
    itself = torch.eye(height, dtype=torch.bool, device=q.device)[:, None, :]  # (H, 1, H): i == y
    column = column.masked_fill(itself, float("-inf"))
    row = torch.einsum("bcyx,bcyj->byxj", q, k)  # (B, H, W, W): against (y, j)
    weights = torch.softmax(torch.cat([column, row], dim=-1), dim=-1)  # (B, H, W, H + W)
    out = torch.einsum("byxi,bcix->bcyx", weights[..., :height], v)
    return out + torch.einsum("byxj,bcyj->bcyx", weights[..., height:], v)


class CrissCrossStandIn(torch.nn.Module):
    """mmcv's CrissCrossAttention, in place: 1x1 convs q, k to C/8 and v to C, ``x + γ · criss_cross(q, k, v)``
    with mmcv's ``Scale`` for γ (0 at init), so the keys are mmcv's."""

    def __init__(self, in_channels: int) -> None:
        from mmcv.cnn import Scale

        super().__init__()
        self.query_conv = torch.nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = torch.nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = torch.nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma(criss_cross(self.query_conv(x), self.key_conv(x), self.value_conv(x)))


def _build(config: str, narrow: bool = False):
    """mmseg's model of ``config`` (BN for SyncBN, no pretrained file; CCHead's attention the stand-in)."""
    import mmseg
    import mmseg.models.decode_heads.cc_head as cc_head
    from mmengine.config import Config, ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cc_head.CrissCrossAttention = CrissCrossStandIn
    model_cfg = no_sync_bn(Config.fromfile(Path(mmseg.__file__).parent / ".mim" / "configs" / config).model.to_dict())
    model_cfg["pretrained"] = None
    model_cfg["backbone"].pop("init_cfg", None)
    if narrow:
        for part, options in NARROW.items():
            model_cfg[part].update(options)
        head = model_cfg["decode_head"]
        if head["type"] == "DAHead":
            head["pam_channels"] = 2
        if head["type"] == "ANNHead":
            head.update(in_channels=[128, 256], project_channels=8)
    return MODELS.build(ConfigDict(model_cfg))


def _check_stand_in(folder: Path) -> None:
    """Save the stand-in's attention on random q, k, v for `check`; compare it with mmcv's own file if shipped."""
    import importlib.util

    import mmcv

    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 1, 4, 7, 9, generator=generator)
    v = torch.randn(1, 5, 7, 9, generator=generator)
    torch.save({"q": q, "k": k, "v": v, "out": criss_cross(q, k, v)}, folder / "criss_cross_op.pt")
    source = Path(mmcv.__file__).parent / "ops" / "cc_attention.py"
    if not source.exists():
        print(f"criss-cross stand-in: {source} not shipped; checked against nlseg's reference only (by `check`)")
        return
    spec = importlib.util.spec_from_file_location("mmcv_cc_attention_file", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the file alone: torch, mmengine's registry and mmcv.cnn's Scale
    theirs, ours = module.CrissCrossAttention(40), CrissCrossStandIn(40)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(generator=generator)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 40, 7, 9, generator=generator)
        diff = float((ours(x) - theirs(x)).abs().max())
    print(f"criss-cross stand-in vs mmcv {mmcv.__version__}'s {source.name} (same weights, 2x40x7x9): "
          f"max |diff| {diff:.1e}")


def _randomise(model: torch.nn.Module) -> None:
    """Random weights at a scale that keeps activations near 1, and BatchNorm statistics that are not a no-op.

    Every weight and bias is random (convolutions N(0, 1/fan-in), the rest N(0, 0.5²)). The running statistics
    are those of a batch of 4 random images (one train-mode pass with momentum 1, dropout off), then each mean
    moved by 0.2 of its deviation and each variance scaled by a factor in 0.8..1.25, both random: no norm is the
    identity, and the logits stay of order 1-10, where float32 rounding is far below the 1e-5 asked for.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith(("running_mean", "running_var")):
                scale = tensor[0].numel() ** -0.5 if tensor.dim() == 4 else 0.5
                tensor.copy_(torch.randn_like(tensor) * scale)
        model.eval()
        for norm in norms:
            norm.train()
            norm.momentum = 1.0
        features = model.extract_feat(torch.rand(4, 3, *SIZE))
        model.decode_head(features), model.auxiliary_head(features)
        for norm in norms:
            norm.momentum = 0.1
            deviation = norm.running_var.sqrt()
            norm.running_mean.add_(0.2 * deviation * torch.randn_like(deviation))
            norm.running_var.mul_(torch.empty_like(deviation).uniform_(0.8, 1.25))
        model.eval()


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _check_stand_in(folder)
    for head, path in CONFIGS.items():
        torch.manual_seed(0)
        model = _build(path)
        _randomise(model)
        with torch.no_grad():
            x = torch.rand(1, 3, *SIZE)
            features = model.extract_feat(x)
            main = model.decode_head(features)
            main = main[0] if isinstance(main, (list, tuple)) else main  # DAHead: (pam+cam, pam, cam)
            aux = model.auxiliary_head(features)
        torch.save({"meta": {"config": path}, "state_dict": model.state_dict()}, folder / f"{head}.pth")
        torch.save({"input": x, "main": main, "aux": aux}, folder / f"{head}_io.pt")
        values = sum(t.numel() for t in model.state_dict().values())
        print(f"{head}: {path}, {values} values, logits {tuple(main.shape)}, max |logit| {float(main.abs().max()):.1f}")


NARROW = {"backbone": {"base_channels": 8, "stem_channels": 8},
          "decode_head": {"in_channels": 256, "channels": 16},
          "auxiliary_head": {"in_channels": 128, "channels": 8}}
"""mmseg options for nlseg's ``backbone_width=8, head_channels=16`` (layer3 128, layer4 256 channels)."""


def keys(path: Path) -> None:
    import json

    out: dict[str, dict[str, list[int]]] = {}
    for head, config in CONFIGS.items():
        state = _build(config, narrow=True).state_dict()
        shapes = {k: list(v.shape) for k, v in state.items()}
        if "backbone" not in out:
            out["backbone"] = {k: v for k, v in shapes.items() if k.startswith("backbone.")}
        assert all(out["backbone"][k] == v for k, v in shapes.items() if k.startswith("backbone."))
        out[head] = {k: v for k, v in shapes.items() if not k.startswith("backbone.")}
    lines = [f'"{part}": {{\n' + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(shapes.items()))
             + "\n}" for part, shapes in out.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"{path}: {sum(map(len, out.values()))} keys")


def check(folder: Path) -> None:
    import nlseg
    from nlseg.config import load_config
    from nlseg.engine.convert_mmseg import convert_mmseg, mmseg_recipe
    from nlseg.ops import criss_cross_attention_reference

    op = torch.load(folder / "criss_cross_op.pt")
    diff = float((criss_cross_attention_reference(op["q"], op["k"], op["v"]) - op["out"]).abs().max())
    print(f"criss-cross stand-in vs nlseg.ops.criss_cross_attention_reference (1x4x7x9 q, k; 5 values): {diff:.1e}")
    for head in CONFIGS:
        source = folder / f"{head}.pth"
        converted = convert_mmseg(source, load_config(mmseg_recipe(source)))
        cfg = converted["config"]
        model = nlseg.create_model(converted["model_name"], num_classes=converted["num_classes"],
                                   **cfg["model"]["options"]).eval()
        model.load_state_dict(converted["model"])
        io = torch.load(folder / f"{head}_io.pt")
        with torch.no_grad():
            features = model.backbone(io["input"])
            aux = {name: aux_head(features[name]) for name, aux_head in model.aux_heads.items()}
            main = model.decoder(features, aux)
        cells = []
        for kind, got in (("main", main), ("aux", aux["layer3"])):
            diff = float((got - io[kind]).abs().max())
            flipped = float((got.argmax(1) != io[kind].argmax(1)).float().mean())
            cells.append(f"{kind} max|diff| {diff:.1e} ({diff / float(io[kind].abs().max()):.1e} of max|logit|), "
                         f"arg-max differs at {flipped:.0%}")
        print(f"{head}: {converted['model_name']}", "; ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check", "keys"):
        sys.exit(__doc__.split("\n\n")[1])
    {"write": write, "check": check, "keys": keys}[sys.argv[1]](Path(sys.argv[2]))
