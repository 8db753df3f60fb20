"""The app, launched for real on 127.0.0.1 and driven through its named API with
gradio_client; the Dockerfile parsed and tied to the CI install step."""
from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError

from ua3dtalk.config import EMOTIONS
from ua3dtalk.video import write_wav

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
SIZE = 64  # the smallest choice keeps ten CPU generations quick


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _speech(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wav = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * (0.3 * np.sin(2 * np.pi * 180 * t)
                                                     + 0.05 * rng.standard_normal(t.size))
    return write_wav(path, wav.astype(np.float32), RATE)


@pytest.fixture(scope="module")
def bundled(tiny_checkpoint, tmp_path_factory) -> str:
    """The tiny test checkpoint as the only bundled subject."""
    root = tmp_path_factory.mktemp("bundled")
    (root / "tiny").symlink_to(tiny_checkpoint, target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("UA3DTALK_CHECKPOINTS", str(root))
    yield "tiny"
    mp.undo()


@pytest.fixture(scope="module")
def client(bundled):
    from ua3dtalk import webapp

    demo = webapp.build()
    port = _free_port()
    webapp.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    return _speech(tmp_path_factory.mktemp("audio") / "speech.wav", 0.2)


@pytest.fixture(scope="module")
def clip(clip_file) -> dict:
    return handle_file(str(clip_file))


def _generate(client, subject, audio, emotion="neutral", intensity=1.0, fusion="uncertainty", size=SIZE):
    return client.predict(subject, audio, emotion, intensity, fusion, size, api_name="/generate")


def _path(value) -> Path:
    """A file output as the client returns it: a path, or a dict holding one."""
    if isinstance(value, dict):
        value = value.get("video") or value.get("path")
    return Path(value)


def test_api_is_named_and_lists_its_inputs(client):
    info = client.view_api(print_info=False, return_format="dict")
    endpoint = info["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names == ["subject", "audio", "emotion", "intensity", "fusion", "size"]
    assert len(endpoint["returns"]) == 5


@pytest.mark.parametrize("emotion", [*EMOTIONS, "auto"])
def test_generate_each_emotion(client, bundled, clip, emotion):
    video, heat, gallery, plot, report = _generate(client, bundled, clip, emotion)
    out = subprocess.run([_ffmpeg(), "-hide_banner", "-i", str(_path(video))], capture_output=True, text=True).stderr
    assert "Video: h264" in out and "Audio: aac" in out
    assert _path(heat).stat().st_size > 0
    assert len(gallery) == 5 and all(_path(item["image"]).is_file() for item in gallery)
    assert plot is not None
    assert f"{SIZE} px" in report and "5 frames" in report and "cpu" in report
    used = re.search(r"\*\*Emotion used:\*\* (.*)", report).group(1)
    if emotion == "auto":
        assert used.startswith("auto → ") and any(e in used for e in EMOTIONS)
    else:
        assert used == f"{emotion} 100 %"


def test_uniform_fusion_changes_the_weights(client, bundled, clip):
    *_, report = _generate(client, bundled, clip, "happy", fusion="uniform")
    assert "fusion** uniform" in report


def _ffmpeg() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def _error(client, *args, **kwargs) -> str:
    with pytest.raises((AppError, ValidationError)) as info:
        _generate(client, *args, **kwargs)
    message = str(info.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


def test_bad_inputs_give_their_messages(client, bundled, clip, tmp_path, monkeypatch):
    assert "no audio" in _error(client, bundled, None)

    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    assert "cannot decode" in _error(client, bundled, handle_file(str(junk)))

    silent = write_wav(tmp_path / "silent.wav", np.zeros(RATE, np.float32), RATE)
    assert "silent" in _error(client, bundled, handle_file(str(silent)))

    monkeypatch.setenv("UA3DTALK_MAX_SECONDS", "1")
    long = _speech(tmp_path / "long.wav", 1.6)
    assert "limit here is 1 s" in _error(client, bundled, handle_file(str(long)))
    monkeypatch.delenv("UA3DTALK_MAX_SECONDS")

    message = _error(client, "no_such_subject", clip)
    assert "not found" in message and "bundled subject" in message

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "unreachable" in _error(client, "someone/missing-subject", clip)


def test_browser_generates_and_saves_a_screenshot(bundled, clip_file, tmp_path):
    """Headless Chromium: python app.py starts, the page loads, one generation runs."""
    shot = tmp_path / "app.png"
    out = subprocess.run([sys.executable, "scripts/browser_check.py", "--screenshot", str(shot), "--size", str(SIZE),
                          "--audio", str(clip_file), "--emotion", "sad", "--timeout", "240"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    timings = json.loads(out.stdout.splitlines()[0])
    assert timings["page_ready_s"] > 0 and timings["generate_s"] > 0
    assert "sad 100 %" in out.stdout
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1400 and image.shape[0] > 1000
    assert image.std() > 20  # a rendered page, not a blank one


# --- Dockerfile -----------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    steps = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            steps.append((word.upper(), " ".join(rest.split())))
    return steps


def test_dockerfile_is_a_gpu_space_image():
    steps = _dockerfile()
    assert steps[0][0] == "FROM" and re.match(r"nvidia/cuda:\d+\.\d+(\.\d+)?-devel-ubuntu\d+\.\d+$", steps[0][1])
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] in ("1000", "user")
    assert any(op == "RUN" and "useradd" in arg and "-u 1000" in arg for op, arg in steps)
    assert ("EXPOSE", "7860") in steps
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "GRADIO_SERVER_NAME=0.0.0.0" in env and "GRADIO_SERVER_PORT=7860" in env
    assert "TORCH_CUDA_ARCH_LIST=" in env
    assert steps[-1] == ("CMD", '["python", "app.py"]')
    runs = [arg for op, arg in steps if op == "RUN"]
    assert any("gsplat.cuda._backend" in r for r in runs), "gsplat's CUDA code is compiled at build time"
    assert any("list_bundled" in r for r in runs), "the image checks the bundled subject is inside"
    # USER comes after the install and compile steps (they need root), CMD after USER
    ops = [op for op, _ in steps]
    assert max(i for i, op in enumerate(ops) if op == "RUN") < ops.index("USER") < ops.index("CMD")


def test_dockerfile_installs_with_the_ci_install_script():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_install = next(shlex.split(part)[:2] for line in ci.splitlines() for part in line.split("&&")
                      if "scripts/install.sh" in part)
    assert ci_install == ["bash", "scripts/install.sh"]
    docker_installs = [shlex.split(arg)[:2] for op, arg in _dockerfile() if op == "RUN" and "install.sh" in arg]
    assert docker_installs == [ci_install]
    assert (ROOT / "scripts" / "install.sh").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "checkpoints" not in ignored and "scripts" not in ignored and "assets" not in ignored


def test_front_matter_matches_the_space():
    head = (ROOT / "README.md").read_text().split("---")[1]
    meta = dict(line.split(":", 1) for line in head.strip().splitlines())
    assert meta["sdk"].strip() == "docker" and meta["app_port"].strip() == "7860"
    assert meta["suggested_hardware"].strip() not in ("cpu-basic", "cpu-upgrade", "zero-a10g")


def test_app_py_is_thin():
    source = (ROOT / "app.py").read_text()
    code = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"'))]
    assert len(code) <= 6 and "ua3dtalk.webapp" in source
