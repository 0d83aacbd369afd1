"""The scripts the check runs in subprocesses, as source text: the environment probe and the NCCL probe.

The parent never imports torch or nlseg, so neither can break the report; these do, in their own processes.
"""

# Prints one JSON line: versions, GPUs, nlseg's commands, its recipe fields, each model family's smallest model.
PROBE = r'''
import dataclasses, json, os, platform, re, typing
import torch
import nlseg
from nlseg.cli import COMMANDS
from nlseg.config import EvalConfig, TrainConfig
from nlseg.models import create_model, list_models, model_options

def fields(cls):
    out = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        choices = [a for a in typing.get_args(hint) if isinstance(a, str)] if typing.get_origin(hint) is typing.Literal else None
        out[f.name] = {"type": "bool" if hint is bool else "choice" if choices else "other",
                       "choices": choices, "default": f.default if f.default is not dataclasses.MISSING else None}
    return out

tiny = {"backbone_width": 8, "head_channels": 16, "key_channels": 8, "value_channels": 8}
families = {}
for name in list_models():
    family = re.sub(r"_r\d+$", "", name)
    depth = int(name.rsplit("_r", 1)[1])
    if family in families and families[family]["depth"] <= depth:
        continue
    accepted = sorted(key for key in tiny if key in model_options(name))
    with torch.device("meta"):  # no memory, no weights: only the number of auxiliary heads is read
        model = create_model(name, num_classes=3, **{key: tiny[key] for key in accepted})
    families[family] = {"model": name, "depth": depth, "accepted": accepted, "aux": len(model.aux_heads)}

cuda = torch.cuda.is_available()
gpus = []
for i in range(torch.cuda.device_count() if cuda else 0):
    p = torch.cuda.get_device_properties(i)
    gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                 "multiprocessors": p.multi_processor_count})
nccl = None
if cuda and torch.distributed.is_nccl_available():
    version = torch.cuda.nccl.version()
    nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if cuda else None, "nccl": nccl, "cuda_available": cuda,
    "bf16_on_gpu": cuda and torch.cuda.is_bf16_supported(), "gpus": gpus, "cpu_threads": torch.get_num_threads(),
    "nlseg": nlseg.__version__, "nlseg_path": os.path.dirname(nlseg.__file__), "commands": list(COMMANDS),
    "train_fields": fields(TrainConfig), "eval_fields": fields(EvalConfig), "families": families,
}))
'''

# Under torchrun: an NCCL process group, an all-reduce and one DistributedDataParallel step; rank 0 says so.
NCCL_PROBE = r'''
import os, torch, torch.distributed as dist
from torch import nn
rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local)
dist.init_process_group("nccl")
device = torch.device("cuda", local)
total = torch.tensor([float(rank + 1)], device=device)
dist.all_reduce(total)
assert total.item() == world * (world + 1) / 2, total.item()
torch.manual_seed(0)
net = nn.parallel.DistributedDataParallel(nn.Conv2d(3, 4, 3).to(device), device_ids=[local])
torch.manual_seed(rank)
net(torch.randn(2, 3, 8, 8, device=device)).square().mean().backward()
grad = net.module.weight.grad.clone()
gathered = [torch.empty_like(grad) for _ in range(world)]
dist.all_gather(gathered, grad)
assert all(torch.equal(g, grad) for g in gathered), "DDP left the ranks with different gradients"
if rank == 0:
    print(f"NCCL probe: backend {dist.get_backend()}, world size {world}, all_reduce sum {total.item():.0f}, "
          f"DDP gradients equal on every rank")
dist.barrier()
dist.destroy_process_group()
'''
