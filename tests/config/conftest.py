"""Fixture for config tests: write an org file from text."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write_org(tmp_path: Path):
    def write(text: str, name: str = "acme") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
