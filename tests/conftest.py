"""Shared fixtures: the real audio data, found through SOUNDTAG_DATA (see the README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    root = os.environ.get("SOUNDTAG_DATA")
    path = Path(root) if root else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("real audio data not found: set SOUNDTAG_DATA to the folder holding esc50/, "
                    "esc10/ and fsdkaggle2018/ (in CI: ../shared/data)")
    return root


@pytest.fixture(scope="session")
def esc50_root(data_root: Path) -> Path:
    return data_root / "esc50"


@pytest.fixture(scope="session")
def esc10_root(data_root: Path) -> Path:
    return data_root / "esc10"


@pytest.fixture(scope="session")
def fsd2018_root(data_root: Path) -> Path:
    return data_root / "fsdkaggle2018"
