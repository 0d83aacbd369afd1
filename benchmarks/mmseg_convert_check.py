"""`nlseg convert mmseg` against mmsegmentation itself: same weights, same input, same logits.

Two steps, one per virtual env (mmsegmentation is never imported by nlseg or its tests):

    .venv-mmseg/bin/python benchmarks/mmseg_convert_check.py write DIR   # mmseg: random networks, inputs, logits
    .venv/bin/python benchmarks/mmseg_convert_check.py check DIR         # nlseg: convert, run, compare

and, for tests/test_convert_mmseg.py, the key names and shapes of the same networks at width 8 (the stem
4-4-8, heads 16 channels, PAM 2), which the test converts without mmsegmentation:

    .venv-mmseg/bin/python benchmarks/mmseg_convert_check.py keys tests/golden/mmseg_keys.json

`write` builds mmsegmentation 1.2.2's NLHead, DAHead, PSPHead and ASPPHead networks on ResNet-50-d8
(Cityscapes configs, BN for SyncBN), fills every parameter and BatchNorm statistic with random values (so no
block is an identity and no norm is a no-op), and saves each checkpoint as mmseg does (``{"meta",
"state_dict"}``) with a random 1x3x64x96 input and the eval-mode decode and auxiliary logits (1/8 scale).
`check` converts each checkpoint with ``nlseg.engine.convert_mmseg`` (the recipe chosen from the file), loads it
into the nlseg model and prints max |nlseg - mmseg| over max |mmseg| for both logits. (`.venv-mmseg` is made by
benchmarks/mmseg_env.sh.)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

CONFIGS = {
    "nl": "nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "danet": "danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ppm": "pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "aspp": "deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py",
}
SIZE = (64, 96)


def _no_sync_bn(cfg):
    if isinstance(cfg, dict):
        return {k: ("BN" if k == "type" and v == "SyncBN" else _no_sync_bn(v)) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_no_sync_bn(v) for v in cfg)
    return cfg


def write(folder: Path) -> None:
    import mmseg
    from mmengine.config import Config, ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    for head, path in CONFIGS.items():
        torch.manual_seed(0)
        model_cfg = _no_sync_bn(Config.fromfile(configs / path).model.to_dict())
        model_cfg["pretrained"] = None
        model_cfg["backbone"].pop("init_cfg", None)
        model = MODELS.build(ConfigDict(model_cfg)).eval()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.is_floating_point():
                    fill = torch.rand_like(tensor) + 0.5 if name.endswith("running_var") else torch.randn_like(tensor)
                    tensor.copy_(fill * (0.05 if tensor.dim() == 4 else 0.5))
            x = torch.rand(1, 3, *SIZE)
            features = model.extract_feat(x)
            main = model.decode_head(features)
            main = main[0] if isinstance(main, (list, tuple)) else main  # DAHead: (pam+cam, pam, cam)
            aux = model.auxiliary_head(features)
        torch.save({"meta": {"config": path}, "state_dict": model.state_dict()}, folder / f"{head}.pth")
        torch.save({"input": x, "main": main, "aux": aux}, folder / f"{head}_io.pt")
        values = sum(t.numel() for t in model.state_dict().values())
        print(f"{head}: {path}, {values} values, logits {tuple(main.shape)}")


NARROW = {"backbone": {"base_channels": 8, "stem_channels": 8},
          "decode_head": {"in_channels": 256, "channels": 16},
          "auxiliary_head": {"in_channels": 128, "channels": 8}}
"""mmseg options for nlseg's ``backbone_width=8, head_channels=16`` (layer3 128, layer4 256 channels)."""


def keys(path: Path) -> None:
    import json

    import mmseg
    from mmengine.config import Config, ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    out: dict[str, dict[str, list[int]]] = {}
    for head, config in CONFIGS.items():
        model_cfg = _no_sync_bn(Config.fromfile(configs / config).model.to_dict())
        model_cfg["pretrained"] = None
        model_cfg["backbone"].pop("init_cfg", None)
        for part, options in NARROW.items():
            model_cfg[part].update(options)
        if head == "danet":
            model_cfg["decode_head"]["pam_channels"] = 2
        state = MODELS.build(ConfigDict(model_cfg)).state_dict()
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
        rows = [(kind, float((got - io[kind]).abs().max() / io[kind].abs().max()))
                for kind, got in (("main", main), ("aux", aux["layer3"]))]
        print(f"{head}: {converted['model_name']}", "  ".join(f"{k} {v:.1e}" for k, v in rows))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check", "keys"):
        sys.exit(__doc__.split("\n\n")[1])
    {"write": write, "check": check, "keys": keys}[sys.argv[1]](Path(sys.argv[2]))
