"""Shared pytest fixtures: where ../shared (real datasets, golden fixtures) lives."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JAXFM_SHARED", REPO.parent / "shared"))
FIXTURES = REPO / "tests" / "fixtures"
# The CLI's persistent compilation cache stays off in tests (no writes to ~/.cache, no state
# carried between tests); tests/test_compilation_cache.py turns it on in a temporary folder.
os.environ.setdefault("JAXFM_COMPILATION_CACHE", "off")
# Likewise the Laplacian PE disk cache of `jaxfm pretrain` (tests that want one give a tmp_path).
os.environ.setdefault("JAXFM_PE_CACHE", "off")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests that need it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data directory {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    """Each test runs in a fresh working directory: the default workdirs (``runs/fimp``,
    ``runs/pretrain``, ...) of one test never meet another's, nor land in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
