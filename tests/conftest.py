"""Shared fixtures: a fresh engine (journal + executor) in a temporary work directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import dahu.engine

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A work directory for the engine under test."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def engine(workdir: Path):
    """A new engine on ``workdir``, made current for the test."""
    eng = dahu.engine.configure(workdir=str(workdir), max_workers=4)
    yield eng
    eng.executor.shutdown(wait=True, timeout=30)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty plugin directory listed in ``DAHU_PLUGINS``."""
    path = tmp_path / "plugins"
    path.mkdir()
    monkeypatch.setenv("DAHU_PLUGINS", str(path))
    return path


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process of the test suite."""
    env = dict(os.environ)
    env.update(extra)
    return env
