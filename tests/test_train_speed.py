"""Training speed switches: channels_last, torch.compile and bf16 autocast train the same network, and their
checkpoints are the plain model's, loadable and resumable whichever switches are on."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_trainer import SMALL, train_losses, write_recipe

import nlseg
from nlseg.cli import main as cli_main
from nlseg.config import load_config
from nlseg.engine import trainer
from nlseg.engine.checkpoint import load_checkpoint
from nlseg.engine.interrupt import stop_workers
from nlseg.engine.trainer import setup, train, train_step


def _plain_keys(model: str) -> list[str]:
    return list(nlseg.create_model(model, num_classes=8, **SMALL[model]).state_dict())


def _loads_into_a_plain_model(path, model: str) -> None:
    """The checkpoint's weights load strictly into a freshly built (uncompiled, contiguous, float32) model."""
    state = load_checkpoint(path)
    assert list(state["model"]) == _plain_keys(model)
    plain = nlseg.create_model(model, num_classes=8, **SMALL[model])
    plain.load_state_dict(state["model"])
    assert all(p.dtype == torch.float32 for p in plain.parameters())


def test_channels_last_trains_to_the_same_weights(tmp_path):
    """fp32, 4 steps with momentum: NHWC changes only the order of the sums (within 1e-4 of each tensor's scale).

    fcn_r18 only: on the CPU, PyTorch's channels-last batch-norm training kernel sums less accurately than the
    contiguous one, and the other tiny families amplify that over 4 steps (denoised_nl_r18: 7e-2 of a tensor's
    scale, 3e-6 with its norms fed NCHW; ann_r50 more). The float64 test below shows that every family computes
    the same function in either layout.
    """
    model = "fcn_r18"
    weights = {}
    for channels_last in (False, True):
        recipe = write_recipe(tmp_path / f"{channels_last}.yaml", model, iters=4, channels_last=channels_last)
        train(load_config(recipe), tmp_path / str(channels_last))
        weights[channels_last] = load_checkpoint(tmp_path / str(channels_last) / "last.pt")["model"]
    torch.manual_seed(0)  # the recipe's seed: the runs' initial weights
    initial = nlseg.create_model(model, num_classes=8, **SMALL[model]).state_dict()
    moved = 0
    for key, plain in weights[False].items():
        nhwc = weights[True][key]
        scale = plain.abs().max().clamp_min(1e-3)
        assert (nhwc - plain).abs().max() <= 1e-4 * scale, key
        if plain.is_floating_point() and plain.dim() == 4:
            moved += not torch.equal(plain, initial[key])
    assert moved > 0  # the runs trained (weights left their initial values)


@pytest.mark.parametrize("model", sorted(SMALL))
def test_channels_last_computes_the_same_gradients_in_float64(model):
    """Train-mode forward and backward in float64, NHWC against NCHW: equal to 1e-10 (every family, ANN included)."""
    grads = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = nlseg.create_model(model, num_classes=8, **SMALL[model]).double().to(memory_format=memory_format)
        images = torch.randn(2, 3, 33, 49, dtype=torch.float64).contiguous(memory_format=memory_format)
        torch.manual_seed(1)  # the same dropout masks
        out = net(images)
        (out["out"].square().mean() + sum(a.square().mean() for a in out["aux"])).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert grads[0].norm() > 0
    assert (grads[1] - grads[0]).norm() <= 1e-10 * grads[0].norm()


def test_channels_last_reaches_the_weights_and_the_batches(tmp_path):
    cfg = load_config(write_recipe(tmp_path / "r.yaml", iters=1, channels_last=True))
    run = setup(cfg, tmp_path / "w")
    convs = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    seen = []
    run.net = _Recorder(run.net, seen)
    train_step(run, 0)
    assert seen == [True]
    stop_workers(run)
    run.log.close()


class _Recorder(torch.nn.Module):
    """Calls ``net``, noting whether each batch arrives in channels-last layout."""

    def __init__(self, net: torch.nn.Module, seen: list[bool]) -> None:
        super().__init__()
        self.net, self.seen = net, seen

    def forward(self, images: torch.Tensor) -> dict:
        self.seen.append(images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous())
        return self.net(images)


@pytest.fixture
def counted_compiles(monkeypatch):
    """``train.compile`` through aot_eager (graph capture and AOT autograd, no code generation), counting graphs."""
    graphs = []

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    torch._dynamo.reset()
    monkeypatch.setattr(trainer, "COMPILE_BACKEND", backend)
    yield graphs
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_run_trains_saves_plain_keys_and_resumes_across_the_switches(tmp_path, counted_compiles, capsys):
    """The CLI journey: train with channels_last and compile, resume with them, resume without them."""
    recipe = write_recipe(tmp_path / "r.yaml", "fcn_r18", iters=30, lr=0.02, log_interval=1, evaluate=True)
    work = tmp_path / "w"
    assert cli_main(["train", str(recipe), "--work-dir", str(work),
                     "--set", "train.channels_last=true", "train.compile=true"]) == 0
    assert counted_compiles, "the training forward went through torch.compile"
    losses = train_losses(work)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    for checkpoint in ("last.pt", "best.pt"):  # validation ran on the plain model and saved best.pt
        _loads_into_a_plain_model(work / checkpoint, "fcn_r18")
        assert not any("_orig_mod" in key for key in load_checkpoint(work / checkpoint)["model"])

    assert cli_main(["train", "--work-dir", str(work), "--resume", "--set", "train.iters=32"]) == 0
    assert cli_main(["train", "--work-dir", str(work), "--resume",
                     "--set", "train.iters=34", "train.compile=false", "train.channels_last=false"]) == 0
    state = load_checkpoint(work / "last.pt")
    assert state["iteration"] == 34 and state["config"]["train"]["compile"] is False
    _loads_into_a_plain_model(work / "last.pt", "fcn_r18")
    assert len(train_losses(work)) == 34 and all(loss < losses[0] for loss in train_losses(work)[30:])
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_denoised_nl_matches_eager_steps(tmp_path, counted_compiles):
    """The Denoised NL op's custom autograd function inside a compiled network: 3 steps, the same weights as eager."""
    weights = {}
    for compiled in (False, True):
        recipe = write_recipe(tmp_path / f"{compiled}.yaml", "denoised_nl_r18", iters=3, compile=compiled)
        train(load_config(recipe), tmp_path / str(compiled))
        weights[compiled] = load_checkpoint(tmp_path / str(compiled) / "last.pt")["model"]
    assert counted_compiles
    assert list(weights[True]) == list(weights[False])
    for key, eager in weights[False].items():
        assert torch.allclose(weights[True][key], eager, rtol=1e-4, atol=1e-5), key


def test_bf16_autocast_trains(tmp_path, monkeypatch):
    """train.amp=bf16 on the CPU: the convolutions run in bf16, the loss falls, the checkpoint is float32."""
    dtypes = set()

    def note(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(note)
    try:
        cfg = load_config(write_recipe(tmp_path / "r.yaml", iters=30, lr=0.02, log_interval=1, amp="bf16"))
        assert train(cfg, tmp_path / "w")["iteration"] == 30
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}
    losses = train_losses(tmp_path / "w")
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    _loads_into_a_plain_model(tmp_path / "w" / "last.pt", "fcn_r18")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="inductor's first compile of even a tiny network takes about 90 s on a 2-core CPU")
def test_inductor_trains_on_cuda(tmp_path):
    """The default backend with every switch on a GPU: loss falls, the checkpoint is the plain model's."""
    torch._dynamo.reset()
    recipe = write_recipe(tmp_path / "r.yaml", "denoised_nl_r18", iters=30, lr=0.02, log_interval=1,
                          device="cuda", compile=True, channels_last=True, amp="bf16")
    train(load_config(recipe), tmp_path / "w")
    losses = train_losses(tmp_path / "w")
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    _loads_into_a_plain_model(tmp_path / "w" / "last.pt", "denoised_nl_r18")
    torch._dynamo.reset()


def test_bench_train_measures_loader_step_and_loop_per_lever(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", "fcn_r18")
    out = tmp_path / "speed.json"
    assert cli_main(["bench", "train", str(recipe), "--levers", "channels_last,bf16", "--steps", "1",
                     "--repeats", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| fcn_r18 | step alone (images/s) |" in printed and "×)" in printed
    records = {r["measure"]: r for r in json.loads(out.read_text())}
    assert list(records) == ["loader alone (images/s)", "step alone (images/s)", "full loop (images/s)",
                             "first step (s)"]
    for measure, record in records.items():
        assert record["batch_size"] == 4 and record["repeats"] == 2 and record["steps"] == 1
        levers = ["as_built"] if measure.startswith("loader") else ["as_built", "channels_last", "bf16"]
        assert all(0 < record[name] < float("inf") for name in levers), record
        if measure.startswith("loader"):
            assert record["channels_last"] is None and record["bf16"] is None
    assert cli_main(["bench", "train", str(recipe), "--levers", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("nlseg bench: error: --levers: unknown lever(s) fast; known: as_built, channels_last, compile, "
                   "bf16, all")


@pytest.mark.slow
def test_two_process_torchrun_with_compile_channels_last_and_accumulation(tmp_path):
    """DDP with the compiled wrapper (dynamo's DDP graph splitting) and no_sync micro-batches: trains, saves plain keys."""
    recipe = write_recipe(tmp_path / "r.yaml", iters=3, checkpoint_interval=3, grad_accum=2, compile=True,
                          channels_last=True)
    work = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NLSEG_COMPILE_BACKEND": "eager"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nlseg", "train", str(recipe), "--work-dir", str(work)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "× 2 processes" in result.stdout
    _loads_into_a_plain_model(work / "last.pt", "fcn_r18")
    assert load_checkpoint(work / "last.pt")["iteration"] == 3
