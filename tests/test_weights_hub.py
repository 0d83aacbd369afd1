"""Weights by name (nlseg.backbones.hub): download once into $TORCH_HOME/hub/checkpoints, verified, whole or
not at all, one download for concurrent callers, nothing touched offline, and `nlseg train` loading a named
backbone. Every download comes from an HTTP server the test starts on 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from nlseg.backbones import hub
from nlseg.backbones.hub import WeightsEntry
from nlseg.cli import main as cli_main
from nlseg.errors import DownloadError
from nlseg.models import create_model

TINY = {"backbone_width": 8, "head_channels": 16, "key_channels": 8}
NUM_CLASSES = 5  # SyntheticContext's classes


@dataclass
class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``mode`` 'whole', 'cut' (half the body, then the
    connection closes), 'slow' (the body in 8 pieces, 20 ms apart) or 'stall' (half the body, then nothing until
    ``release`` is set); ``requests`` lists the paths asked."""

    files: dict[str, bytes]
    mode: str = "whole"
    requests: list[str] = field(default_factory=list)
    port: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(files={})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests.append(self.path)
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.mode in ("cut", "stall"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                state.release.wait(30 if state.mode == "stall" else 0)
                self.close_connection = True
                return
            pieces = 8 if state.mode == "slow" else 1
            step = -(-len(body) // pieces)
            for start in range(0, len(body), step):
                self.wfile.write(body[start:start + step])
                self.wfile.flush()
                if pieces > 1:
                    time.sleep(0.02)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME in tmp_path, no offline variable, no URL override; returns the checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for variable in (*hub.OFFLINE_VARIABLES, hub.URL_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert hub.cache_dir() == folder
    return folder


@pytest.fixture
def backbone_file() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A saved state dict for the backbone of the tiny denoised_nl_r18 (random values), and the tensors."""
    torch.manual_seed(3)
    model = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, **TINY)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.backbone.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def tiny_recipe(path: Path) -> Path:
    """A one-iteration Denoised NL run on two synthetic images, with a learning rate that moves no weight."""
    path.write_text(yaml.safe_dump({
        "model": {"name": "denoised_nl_r18", "options": TINY},
        "data": {"dataset": "synthetic", "crop_size": 48, "scale_range": [1.0, 1.0], "num_workers": 0,
                 "options": {"length": 2, "size": [40, 56]}},
        "loss": {"main": "ce", "aux_weights": [1.0, 1.0]},
        "train": {"iters": 1, "batch_size": 2, "lr": 1e-9, "weight_decay": 0.0, "device": "cpu", "log_interval": 1},
    }))
    return path


def register(monkeypatch: pytest.MonkeyPatch, server: Server, body: bytes) -> WeightsEntry:
    """Put a table entry ``test-tiny`` for ``body`` on the test server (checksum prefix in the name, as torchvision)."""
    digest = hashlib.sha256(body).hexdigest()
    filename = f"tiny-{digest[:8]}.pth"
    server.files[filename] = body
    entry = WeightsEntry("test-tiny", server.url(filename), digest, "resnet18", "deep", "MIT", "this test")
    monkeypatch.setitem(hub.WEIGHTS._items, entry.name, entry)
    return entry


def test_the_table_is_real_and_complete() -> None:
    """Every stem the recipes use has ResNet-50 and -101 files; URLs and checksums look like the publishers'."""
    entries = list(hub.WEIGHTS.values())
    for stem in ("classic", "deep", "v1c"):
        assert {e.backbone for e in entries if e.stem == stem} >= {"resnet50", "resnet101"}, stem
    for e in entries:
        assert e.url.startswith("https://") and e.license and e.source
        assert len(e.sha256) in (8, 64) and int(e.sha256, 16) >= 0
        assert f"-{e.sha256[:8]}." in e.filename  # the publisher's file name carries the checksum prefix
    assert hub.WEIGHTS["torchvision-resnet101"].url == "https://download.pytorch.org/models/resnet101-63fe2227.pth"


def test_download_lands_in_the_cache_verified_and_happens_once(server, cache, monkeypatch, backbone_file) -> None:
    body, _ = backbone_file
    entry = register(monkeypatch, server, body)
    path = hub.fetch_weights("test-tiny", progress=False)
    assert path == cache / entry.filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    assert hub.fetch_weights("test-tiny") == path
    assert hub.resolve_weights("test-tiny") == (path, ())
    assert server.requests == [f"/{entry.filename}"]  # the second and third calls read the cache
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename, entry.filename + ".lock"]


def test_wrong_checksum_deletes_the_download(server, cache, monkeypatch, backbone_file, capsys, tmp_path) -> None:
    """A real entry with its URL base moved to the test server, which serves other bytes under its name."""
    body, _ = backbone_file
    entry = hub.WEIGHTS["torchvision-resnet18"]
    server.files[entry.filename] = body
    monkeypatch.setenv(hub.URL_VARIABLE, server.url())
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("torchvision-resnet18")
    message = str(info.value)
    assert "\n" not in message and "checksum mismatch" in message and "expected sha256 f37072fd" in message
    assert hashlib.sha256(body).hexdigest() in message and "deleted" in message
    assert server.requests == [f"/{entry.filename}"]
    assert [p.name for p in cache.iterdir()] == [entry.filename + ".lock"]
    # the command line says it in one line after the download's, with exit status 2
    capsys.readouterr()
    recipe = tiny_recipe(tmp_path / "tiny.yaml")
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "w"), "--set",
                     "model.pretrained_backbone=torchvision-resnet18"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[0].startswith("downloading torchvision-resnet18 from ")
    assert err.splitlines()[-1].startswith("nlseg train: error: checksum mismatch for weights 'torchvision-resnet18'")


def test_interrupted_transfer_leaves_no_file(server, cache, monkeypatch, backbone_file) -> None:
    body, _ = backbone_file
    entry = register(monkeypatch, server, body)
    server.mode = "cut"
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("test-tiny", progress=False)
    message = str(info.value)
    assert "\n" not in message and f"cut short after {len(body) // 2} of {len(body)} bytes" in message
    assert [p.name for p in cache.iterdir()] == [entry.filename + ".lock"]
    server.mode = "whole"  # the next call downloads again, whole
    assert hub.fetch_weights("test-tiny", progress=False).read_bytes() == body


KILLED_FETCH = """
import sys
from nlseg.backbones import hub
from nlseg.backbones.hub import WeightsEntry
hub.WEIGHTS._items["test-tiny"] = WeightsEntry("test-tiny", sys.argv[1], sys.argv[2], "resnet18", "deep", "MIT", "t")
hub.fetch_weights("test-tiny", progress=False)
"""


def test_a_killed_download_leaves_a_part_file_that_the_next_download_removes(server, cache, monkeypatch,
                                                                            backbone_file) -> None:
    """SIGKILL mid-transfer: no code of the killed process runs, so its partial file stays; the next download of
    the same file (holding the lock) deletes it, and the cache ends with the file and its lock only."""
    body, _ = backbone_file
    entry = register(monkeypatch, server, body)
    server.mode = "stall"
    child = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, entry.url, entry.sha256],
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (server.requests and list(cache.glob("*.part"))):  # transferring: half sent, the rest held back
            assert time.monotonic() < deadline and child.poll() is None, "the child never started the transfer"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    parts = sorted(p.name for p in cache.glob("*.part"))
    assert len(parts) == 1 and parts[0].startswith(f".{entry.filename}.")
    server.release.set()
    server.mode = "whole"
    assert hub.fetch_weights("test-tiny", progress=False).read_bytes() == body
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename, entry.filename + ".lock"]


def test_missing_file_on_the_server_is_one_line(server, cache, monkeypatch, backbone_file) -> None:
    entry = register(monkeypatch, server, backbone_file[0])
    server.files.clear()
    with pytest.raises(DownloadError, match=r"failed \(Not Found\); nothing was saved in") as info:
        hub.fetch_weights("test-tiny", progress=False)
    assert "\n" not in str(info.value) and entry.url in str(info.value)


def test_two_concurrent_downloads_make_one_file(server, cache, monkeypatch, backbone_file) -> None:
    body, _ = backbone_file
    entry = register(monkeypatch, server, body)
    server.mode = "slow"  # ~160 ms of transfer: the second caller arrives while the first downloads
    start, results, errors = threading.Barrier(2), [], []

    def fetch() -> None:
        start.wait()
        try:
            results.append(hub.fetch_weights("test-tiny", progress=False))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and results == [cache / entry.filename] * 2
    assert server.requests == [f"/{entry.filename}"]
    assert (cache / entry.filename).read_bytes() == body
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename, entry.filename + ".lock"]


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_offline_never_connects_and_names_the_file_and_folder(server, cache, monkeypatch, backbone_file, variable,
                                                              capsys, tmp_path) -> None:
    body, _ = backbone_file
    entry = register(monkeypatch, server, body)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("test-tiny")
    message = str(info.value)
    assert message == (f"weights 'test-tiny' are not in the cache and {variable}=1 forbids downloading: place "
                       f"{entry.filename} (from {entry.url}) in {cache}")
    # the recipe check refuses it when the recipe is loaded, before anything is built
    recipe = tiny_recipe(tmp_path / "tiny.yaml")
    assert cli_main(["train", str(recipe), "--work-dir", str(tmp_path / "w"), "--set",
                     "model.pretrained_backbone=test-tiny"]) == 2
    assert message in capsys.readouterr().err
    assert server.requests == []
    # a file placed by hand is used offline
    cache.mkdir(parents=True)
    (cache / entry.filename).write_bytes(body)
    assert hub.fetch_weights("test-tiny") == cache / entry.filename and server.requests == []


def test_unknown_name_lists_close_names(cache) -> None:
    with pytest.raises(FileNotFoundError, match=r"'gluon-resnet50-v1' is no weights name \(did you mean "
                                                r"gluon-resnet50-v1s, gluon-resnet50-v1c"):
        hub.resolve_weights("gluon-resnet50-v1")


def test_mmcv_stem_names_are_renamed_into_nlsegs(server, cache, monkeypatch, tmp_path) -> None:
    """An entry with the mmcv prefix map: stem.0..stem.6 -> conv1.*, stem.7 -> bn1; the tensors land unchanged."""
    from nlseg.backbones import load_backbone_weights, resnet18

    torch.manual_seed(0)
    model = resnet18(stem="v1c", width=8)
    ours = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    theirs = {}
    for key, value in ours.items():
        if key.startswith("conv1."):
            key = "stem." + key.removeprefix("conv1.")
        elif key.startswith("bn1."):
            key = "stem.7." + key.removeprefix("bn1.")
        theirs[key] = value
    assert "stem.7.running_mean" in theirs and "stem.6.weight" in theirs
    buffer = io.BytesIO()
    torch.save({"state_dict": theirs}, buffer)
    entry = register(monkeypatch, server, buffer.getvalue())
    monkeypatch.setitem(hub.WEIGHTS._items, "test-tiny", WeightsEntry(**{**entry.__dict__, "renames": hub._MMCV_STEM}))
    load_backbone_weights(model, "test-tiny")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ours[key], rtol=0, atol=0, msg=key)


def test_train_loads_the_named_backbone(server, cache, monkeypatch, backbone_file, tmp_path) -> None:
    """`nlseg train` of a tiny recipe with --set model.pretrained_backbone=NAME: the served tensors are in the
    trained model (lr 1e-9: one step moves no weight by more than 1e-6)."""
    body, state = backbone_file
    register(monkeypatch, server, body)
    recipe = tiny_recipe(tmp_path / "tiny.yaml")
    work = tmp_path / "work"
    assert cli_main(["train", str(recipe), "--work-dir", str(work), "--set",
                     "model.pretrained_backbone=test-tiny"]) == 0
    trained = torch.load(work / "last.pt", map_location="cpu", weights_only=False)["model"]
    for key in ("conv1.0.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        torch.testing.assert_close(trained[f"backbone.{key}"], state[key], rtol=0, atol=1e-6, msg=key)
    fresh = create_model("denoised_nl_r18", num_classes=NUM_CLASSES, **TINY).backbone.state_dict()
    assert (fresh["layer1.0.conv1.weight"] - state["layer1.0.conv1.weight"]).abs().max() > 0.5
    assert len(server.requests) == 1


def test_list_weights_shows_size_checksum_fit_and_cache(server, cache, monkeypatch, backbone_file, capsys) -> None:
    entry = register(monkeypatch, server, backbone_file[0])
    assert cli_main(["list", "weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "size", "sha256", "fits", "cached"] and lines[-1] == f"cache: {cache}"
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert list(rows) == hub.list_weights()
    assert rows["torchvision-resnet101"] == ["torchvision-resnet101", "170.5", "MiB", "63fe2227", "resnet101",
                                             "stem=classic", "no"]
    assert rows["gluon-resnet50-v1s"] == ["gluon-resnet50-v1s", "?", "1762acc0", "resnet50", "stem=deep", "no"]
    assert rows["test-tiny"][-1] == "no"
    hub.fetch_weights("test-tiny", progress=False)
    assert cli_main(["list", "weights"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows["test-tiny"][-1] == "yes" and rows["test-tiny"][2] == entry.sha256[:8]
