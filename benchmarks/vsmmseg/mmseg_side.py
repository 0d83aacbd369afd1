"""mmsegmentation's side of a measurement: its model of the job's network, built from its own config, and the
step that is timed.

Runs in the measuring process with the mmseg venv's Python (which has no nlseg); mmseg and torch are imported
when a step is built.
"""
from __future__ import annotations

from pathlib import Path

from vsmmseg.networks import NETWORKS
from vsmmseg.records import Job


def _model(job: Job):
    """mmseg's model of the job's network: its Cityscapes config, BN for SyncBN, its own random weights."""
    from mmengine.config import Config, ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import mmseg

    register_all_modules()
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    cfg = Config.fromfile(configs / NETWORKS[job.network].mmseg.format(depth=job.depth))
    model_cfg = no_sync_bn(cfg.model.to_dict())
    model_cfg["pretrained"] = None
    model_cfg["backbone"].pop("init_cfg", None)
    model = MODELS.build(ConfigDict(model_cfg))
    model.init_weights()  # mmseg's own random initialisation (no pretrained file)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head."))
    return model, params


def no_sync_bn(cfg):
    """The config with every ``SyncBN`` norm as ``BN`` (one process, no process group)."""
    if isinstance(cfg, dict):
        return {k: ("BN" if k == "type" and v == "SyncBN" else no_sync_bn(v)) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(no_sync_bn(v) for v in cfg)
    return cfg


def infer(job: Job, x):
    """``EncoderDecoder.inference`` of ``x`` without gradients (the decode head; no auxiliary head)."""
    import torch

    model, params = _model(job)
    model.to(x.device).eval()
    shape = tuple(x.shape[-2:])
    metas = [dict(img_shape=shape, ori_shape=shape, pad_shape=shape, padding_size=[0, 0, 0, 0])] * x.shape[0]

    def step():
        with torch.no_grad():
            return model.inference(x, metas)

    return step, params


def train(job: Job, x, y):
    """One SGD step on mmseg's own ``EncoderDecoder.loss`` of ``(x, y)`` (auxiliary head included)."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model, params = _model(job)
    model.to(x.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    shape = tuple(x.shape[-2:])
    samples = []
    for labels in y:
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        sample.gt_sem_seg = PixelData(data=labels[None])
        samples.append(sample)

    def step():
        losses = model.loss(x, samples)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, params
