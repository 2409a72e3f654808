"""Shared pytest set-up for dedl's tests.

Nothing here is autouse: unit tests of the package do not depend on it. It provides the repository root and
the book's configuration to the repository-level tests (test_repo.py, test_book.py), and prints the settings
that decide how the notebooks run (scale, visible GPUs, torch threads) at the top of a test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = {
        "DEDL_SCALE": os.environ.get("DEDL_SCALE", "(unset: ci)"),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
    }
    return ["dedl: " + ", ".join(f"{key}={value!r}" for key, value in settings.items())]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "book: builds the Jupyter Book (slow: executes a notebook)")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The root of the repository (the folder holding pyproject.toml and _config.yml)."""
    return REPO


@pytest.fixture(scope="session")
def book_config() -> dict:
    """The Jupyter Book configuration, _config.yml, as a dict."""
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
