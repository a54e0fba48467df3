"""pytest, repository-wide: the doctest collection over src/ (see pyproject's --doctest-modules)
imports only the modules that hold an example. Importing the others finds nothing and costs
seconds (soundtag.training.module imports Lightning); tests/conftest.py has the fixtures."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"


def pytest_ignore_collect(collection_path: Path, config):
    path = Path(collection_path)
    if path.suffix == ".py" and SRC in path.resolve().parents:
        try:
            return ">>>" not in path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    return None
