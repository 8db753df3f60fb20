"""Shared fixtures: a real local Hub server (see hub_server.py) used as HF_ENDPOINT."""
from __future__ import annotations

import pytest
from hub_server import FakeHub

pytest_plugins = ("subject_fixtures",)  # the tiny synthesized subject and its checkpoint


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A FakeHub on 127.0.0.1 with HF_ENDPOINT pointing at it and a private HF cache.

    huggingface_hub reads HF_HUB_OFFLINE at import time; keep its constant in step
    with the environment so a globally offline shell cannot leak into these tests."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield hub
