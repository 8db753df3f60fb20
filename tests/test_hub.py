import json
import socket

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save

from ua3dtalk.config import ModelConfig, preset
from ua3dtalk.hub import list_bundled, list_subjects, model_card, push_checkpoint, resolve_checkpoint

CONFIG = json.dumps(preset("demo").to_dict()).encode()


def _weights(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return save({"xyz": torch.randn(8, 3, generator=g), "scale": torch.rand(8, generator=g)})


def _ckpt(seed: int = 0, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}config.json": CONFIG, f"{prefix}model.safetensors": _weights(seed)}


def _go_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _downloads(hub) -> int:
    return sum(1 for m, p in hub.requests if m in ("GET", "HEAD") and ("/resolve/" in p or "/lfs-cdn/" in p))


def test_download_then_cache_hit(fake_hub, tmp_path):
    fake_hub.commit("alice/demo", {**_ckpt(1), "README.md": b"# card", "other.txt": b"not needed"})
    folder = resolve_checkpoint("alice/demo")
    assert folder.is_relative_to(tmp_path / "hf" / "hub")
    assert ModelConfig.load(folder / "config.json") == preset("demo")
    torch.testing.assert_close(load_file(folder / "model.safetensors")["xyz"],
                               torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))
    assert not (folder / "other.txt").exists()           # only the checkpoint files are fetched
    assert fake_hub.count("GET", "/lfs-cdn/") == 1        # weights came through the LFS-style redirect
    before = _downloads(fake_hub)
    assert before >= 3
    assert resolve_checkpoint("alice/demo") == folder
    assert _downloads(fake_hub) == before                  # cache hit: no file HEAD/GET at all


def test_offline_mode_uses_the_cache_and_fails_clearly_without(fake_hub, monkeypatch):
    fake_hub.commit("alice/demo", _ckpt(2))
    folder = resolve_checkpoint("alice/demo")
    _go_offline(monkeypatch)
    seen = len(fake_hub.requests)
    assert resolve_checkpoint("alice/demo") == folder
    assert len(fake_hub.requests) == seen                  # offline: not a single request
    fake_hub.commit("bob/other", _ckpt(3))
    with pytest.raises(FileNotFoundError, match=r"(?s)Tried:.*bob/other.*HF_HUB_OFFLINE is set"):
        resolve_checkpoint("bob/other")
    assert len(fake_hub.requests) == seen


def test_revision_pinning(fake_hub):
    v1 = fake_hub.commit("alice/demo", _ckpt(10), tags=("v1",))
    fake_hub.commit("alice/demo", _ckpt(20))
    latest = load_file(resolve_checkpoint("alice/demo") / "model.safetensors")["xyz"]
    pinned = load_file(resolve_checkpoint("alice/demo", revision="v1") / "model.safetensors")["xyz"]
    by_sha = load_file(resolve_checkpoint("alice/demo", revision=v1) / "model.safetensors")["xyz"]
    assert not torch.equal(latest, pinned)
    assert torch.equal(pinned, by_sha)
    torch.testing.assert_close(pinned, torch.randn(8, 3, generator=torch.Generator().manual_seed(10)))
    with pytest.raises(FileNotFoundError, match="revision 'v9' not found"):
        resolve_checkpoint("alice/demo", revision="v9")


def test_subfolder_repos_and_list_subjects(fake_hub, monkeypatch):
    fake_hub.commit("lab/subjects", {**_ckpt(1, "alice/"), **_ckpt(2, "bob/"), "README.md": b"# lab",
                                     "notes/config.json": CONFIG})
    assert list_subjects("lab/subjects") == ["alice", "bob"]
    folder = resolve_checkpoint("lab/subjects/bob")
    assert folder.name == "bob"
    assert fake_hub.count("GET", "/resolve/") + fake_hub.count("HEAD", "/resolve/") > 0
    assert not any("alice" in p for m, p in fake_hub.requests if "/resolve/" in p)   # only bob fetched
    with pytest.raises(FileNotFoundError, match=r"subjects in this repo: \['alice', 'bob'\]"):
        resolve_checkpoint("lab/subjects/carol")
    _go_offline(monkeypatch)
    assert list_subjects("lab/subjects") == ["bob"]        # what the cache holds


def test_missing_repo_says_what_was_tried(fake_hub, tmp_path, monkeypatch):
    bundled = tmp_path / "ckpts"
    (bundled / "demo").mkdir(parents=True)
    for name, data in _ckpt(0).items():
        (bundled / "demo" / name).write_bytes(data)
    monkeypatch.setenv("UA3DTALK_CHECKPOINTS", str(bundled))
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint("nobody/nothing")
    text = str(info.value)
    assert "bundled subject: not one of ['demo']" in text
    assert "local folder:" in text and "nothing" in text
    assert "'nobody/nothing'" in text and "repository not found" in text and fake_hub.url in text
    with pytest.raises(FileNotFoundError, match="not a repo id"):
        resolve_checkpoint("no such thing")
    with pytest.raises(FileNotFoundError, match="repository not found"):
        list_subjects("nobody/nothing")


def test_unreachable_hub_is_a_clear_error(fake_hub, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{dead}")
    with pytest.raises(FileNotFoundError, match=r"(?s)Tried:.*unreachable and it is not in the local cache"):
        resolve_checkpoint("alice/demo")


def test_pickle_only_weights_are_refused(fake_hub, tmp_path):
    fake_hub.commit("eve/pickled", {"config.json": CONFIG, "pytorch_model.bin": b"\x80\x04 not loaded"})
    with pytest.raises(ValueError, match="refusing pickle weights"):
        resolve_checkpoint("eve/pickled")
    assert not any(p.endswith(".bin") for m, p in fake_hub.requests)   # never even downloaded
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_bytes(CONFIG)
    (local / "model.pt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="refusing pickle weights"):
        resolve_checkpoint(str(local))


def test_bundled_and_local_folders_need_no_hub(fake_hub, tmp_path, monkeypatch):
    bundled = tmp_path / "ckpts"
    for name in ("demo", "second"):
        (bundled / name).mkdir(parents=True)
        for f, data in _ckpt(0).items():
            (bundled / name / f).write_bytes(data)
    (bundled / "empty").mkdir()
    monkeypatch.setenv("UA3DTALK_CHECKPOINTS", str(bundled))
    assert list_bundled() == ["demo", "second"]
    assert resolve_checkpoint("demo") == bundled / "demo"
    assert resolve_checkpoint(str(bundled / "second")) == bundled / "second"
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_checkpoint(str(bundled / "empty"))
    assert fake_hub.requests == []


def _write_ckpt(folder, seed=0, report=None):
    folder.mkdir(parents=True)
    for name, data in _ckpt(seed).items():
        (folder / name).write_bytes(data)
    if report is not None:
        (folder / "eval.json").write_text(json.dumps(report))
    (folder / "train_state.safetensors").write_bytes(b"not for upload")
    return folder


def test_push_round_trip_through_the_hub(fake_hub, tmp_path):
    report = {"split": "heldout", "frames": 50, "psnr": 31.25, "ssim": 0.93, "lpips": None,
              "expression_frechet": {"happy": 1.5}, "clips": [{"psnr": 30}], "subject": "demo"}
    ckpt = _write_ckpt(tmp_path / "run", 5, report)
    url = push_checkpoint(ckpt, "alice/pushed", private=True)
    assert url == f"{fake_hub.url}/alice/pushed"
    assert fake_hub.created["alice/pushed"].get("visibility") == "private" \
        or fake_hub.created["alice/pushed"].get("private") is True
    folder = resolve_checkpoint("alice/pushed")
    assert (folder / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert json.loads((folder / "eval.json").read_text())["psnr"] == 31.25
    card = (folder / "README.md").read_text()
    assert "library_name: ua3dtalk" in card and "- gaussian-splatting" in card and "| psnr | 31.25 |" in card
    pushed = fake_hub.repos["alice/pushed"]
    assert "train_state.safetensors" not in pushed.commits[pushed.refs["main"]]
    # a second subject into a subfolder of an existing repo
    url = push_checkpoint(_write_ckpt(tmp_path / "run2", 6), "alice/pushed", subfolder="s2")
    assert url.endswith("/alice/pushed/tree/main/s2")
    assert list_subjects("alice/pushed") == ["", "s2"]


def test_model_card_contents(tmp_path):
    report = {"split": "heldout", "frames": 120, "psnr": 28.5, "sync_confidence": 0.7,
              "expression_frechet": {"happy": 2.0, "sad": 3.0}, "lpips_note": "LPIPS weights unavailable",
              "device": "NVIDIA H100", "flag": True}
    card = model_card(_write_ckpt(tmp_path / "with", 0, report))
    head = card.split("---")[1]
    assert "library_name: ua3dtalk" in head and "- talking-face" in head and "- psnr" in head
    assert "| expression_frechet/sad | 3 |" in card and "| flag |" not in card
    assert "120 heldout frames (NVIDIA H100)" in card and "LPIPS weights unavailable" in card
    assert "`logmel` (320-d)" in card and "Intended use and limits" in card and "synthetic face" in card
    bare = model_card(_write_ckpt(tmp_path / "bare", 0))
    assert "No `eval.json`" in bare and "metrics:" not in bare
