"""App latency as a user sees it: seconds from ``python app.py`` to a usable
page, and from a Generate request to a finished video for 10 s of speech at the
app's default resolution (512 px on CUDA, 256 px on CPU), over its named API.

    python bench/app_latency.py [--seconds 10] [--size N] [--repeats 2] [--subject demo]

Prints a markdown table (the first request includes loading the subject unless
the background warm-up finished first; later ones are warm).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ua3dtalk.audio import load_audio  # noqa: E402
from ua3dtalk.video import write_wav  # noqa: E402


def speech(seconds: float, path: Path) -> Path:
    """The example clips, concatenated and tiled to ``seconds``."""
    clips = [load_audio(p) for p in sorted((ROOT / "assets" / "examples").glob("*.wav"))]
    wav = np.concatenate(clips)
    wav = np.tile(wav, int(np.ceil(seconds * 16000 / wav.size)))[: int(seconds * 16000)]
    return write_wav(path, wav, 16000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, default=None, help="resolution (default: the app's)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--subject", default="demo")
    a = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if app.poll() is not None:
                raise SystemExit(f"app.py exited with {app.returncode}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        ready = time.perf_counter() - start
        client = Client(url, verbose=False)
        from ua3dtalk.webapp import default_size
        size = a.size or default_size()
        with tempfile.TemporaryDirectory() as tmp:
            audio = handle_file(str(speech(a.seconds, Path(tmp) / "speech.wav")))
            rows = []
            for i in range(a.repeats):
                t0 = time.perf_counter()
                *_, report = client.predict(a.subject, audio, "happy", 1.0, "uncertainty", size,
                                            api_name="/generate")
                rows.append((i, time.perf_counter() - t0, report.splitlines()[0]))
    finally:
        app.terminate()
        app.wait(timeout=30)
    print(f"| step | seconds |\n| --- | ---: |\n| `python app.py` -> page ready | {ready:.1f} |")
    for i, seconds, _ in rows:
        print(f"| generate {a.seconds:.0f} s of speech at {size} px, request {i + 1} | {seconds:.1f} |")
    print(f"\n{rows[-1][2]}")


if __name__ == "__main__":
    main()
