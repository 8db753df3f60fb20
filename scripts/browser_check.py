"""Drive the app in a real headless Chromium: start ``python app.py`` (or use a
running app), load the page, upload speech, generate once, save a screenshot.

    python scripts/browser_check.py --screenshot shot.png [--url http://host:port]
        [--audio assets/examples/happy.wav] [--emotion happy] [--size 256]

Prints, as JSON, the seconds from starting ``python app.py`` to a usable page
and from clicking Generate to a finished video (both shown in the page).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_page(page: Page, url: str, app: subprocess.Popen | None, timeout: float) -> None:
    """Retry loading until the Generate button is visible (the server may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        if app is not None and app.poll() is not None:
            raise RuntimeError(f"app.py exited with {app.returncode}:\n{app.stdout.read()[-3000:]}")
        try:
            page.goto(url, wait_until="domcontentloaded", timeout=5000)
            page.locator("#generate").wait_for(state="visible", timeout=10000)
            return
        except Exception:  # connection refused or page not built yet: try again until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def choose(page: Page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown by typing it and clicking the match."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()


def run_check(url: str | None, audio: Path, emotion: str, size: int | None, screenshot: Path,
              timeout: float) -> dict[str, float]:
    app, started = None, time.monotonic()
    if url is None:
        port = free_port()
        app = start_app(port)
        url = f"http://127.0.0.1:{port}/"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            wait_for_page(page, url, app, timeout)
            ready = time.monotonic() - started
            page.locator("#audio input[type=file]").set_input_files(str(audio))
            page.locator("#audio audio, #audio .waveform-container, #audio [data-testid='waveform-Speech']"
                         ).first.wait_for(state="attached", timeout=30000)
            choose(page, "emotion", emotion)
            if size is not None:
                choose(page, "resolution", f"{size} px")
            clicked = time.monotonic()
            page.locator("#generate").click()
            page.locator("#result-video video").wait_for(state="attached", timeout=timeout * 1000)
            page.locator("#report").get_by_text("total").wait_for(timeout=30000)
            generated = time.monotonic() - clicked
            report = page.locator("#report").inner_text()
            page.wait_for_timeout(500)  # let the plot and gallery paint
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            errors = page.locator(".toast-body").all_inner_texts()
            browser.close()
    finally:
        if app is not None:
            app.terminate()
            app.wait(timeout=30)
    if errors:
        raise RuntimeError(f"the page shows errors: {errors}")
    return {"page_ready_s": round(ready, 2) if app is not None else float("nan"),
            "generate_s": round(generated, 2), "report": report}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--screenshot", required=True, type=Path, help="PNG to write")
    p.add_argument("--url", default=None, help="a running app (default: start python app.py here)")
    p.add_argument("--audio", type=Path, default=ROOT / "assets" / "examples" / "happy.wav")
    p.add_argument("--emotion", default="happy")
    p.add_argument("--size", type=int, default=None, help="resolution to choose (default: the app's)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for start-up and for generation")
    a = p.parse_args(argv)
    result = run_check(a.url, a.audio.resolve(), a.emotion, a.size, a.screenshot, a.timeout)
    print(json.dumps({k: v for k, v in result.items() if k != "report"}))
    print(result["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
