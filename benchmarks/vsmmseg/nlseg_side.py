"""nlseg's side of a measurement: the registry model of the job's network and the step that is timed.

Runs in the measuring process with nlseg's Python; nlseg and torch are imported when a step is built.
"""
from __future__ import annotations

import functools

from vsmmseg.networks import AUX_WEIGHT, IGNORE_INDEX, INFER_LEVERS, NETWORKS, NUM_CLASSES
from vsmmseg.records import Job


def _model(job: Job, device):
    """The job's registry model on ``device`` with random weights, and its parameters without auxiliary heads."""
    from nlseg.models import create_model

    model = create_model(NETWORKS[job.network].nlseg.format(depth=job.depth), num_classes=NUM_CLASSES)
    model = model.to(device)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_heads."))
    return model, params


def infer(job: Job, x):
    """One forward pass of ``x`` without gradients, through the model as built or prepared with the job's lever."""
    import torch

    model, params = _model(job, x.device)
    model = model.eval()
    options = INFER_LEVERS[job.lever]
    if options is not None:
        from nlseg.engine.inference import InferenceOptions, prepare_for_inference

        levers = {key: value for key, value in options.items() if key != "channels_last_heads"}
        heads = options.get("channels_last_heads", False)
        model = prepare_for_inference(model, InferenceOptions(**levers), inplace=True, channels_last_heads=heads)
    forward = functools.partial(model, with_aux=True) if job.lever == "with_aux" else model

    def step():
        with torch.no_grad():
            return forward(x)["out"]

    return step, params


def train(job: Job, x, y):
    """One SGD step on ``(x, y)``: cross-entropy on the main output plus AUX_WEIGHT x each auxiliary output's."""
    import torch
    import torch.nn.functional as F

    model, params = _model(job, x.device)
    model = model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if job.lever == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if job.lever == "compile" else model

    def step():
        out = forward(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=IGNORE_INDEX)
        for logits in out["aux"]:
            loss = loss + AUX_WEIGHT * F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, params
