"""Issue 12 item 9: outputs honour the umask (no 0700 model directories, no 0600 results)."""

import os
import stat

import numpy as np
import pytest

from jaxfm.model_dir import save_model_dir, write_json_atomic


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_model_directory(tmp_path, umask):
    out = save_model_dir(
        tmp_path / "model", {"a": {"w": np.ones(3, np.float32)}}, {"x": 1},
        extra_files={"vocab/genes.json": "{}"},
    )  # fmt: skip
    assert _mode(out) == 0o777 & ~umask
    assert _mode(out / "vocab") == 0o777 & ~umask
    for name in ("params.safetensors", "config.json", "vocab/genes.json"):
        assert _mode(out / name) == 0o666 & ~umask, name


def test_json_and_npy_results(tmp_path, umask):
    from jaxfm.model_dir import write_npy_atomic  # what the embed commands write through

    write_json_atomic(tmp_path / "r.json", {"a": 1})
    write_npy_atomic(tmp_path / "e.npy", np.zeros((2, 3), np.float32))
    assert _mode(tmp_path / "r.json") == 0o666 & ~umask
    assert _mode(tmp_path / "e.npy") == 0o666 & ~umask
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), np.zeros((2, 3)))


def test_converted_model_directory(tmp_path, fixtures_dir, umask, capsys):
    from converters.cli import main

    out = tmp_path / "out"
    assert main(["vit", str(fixtures_dir / "vit_hf_small"), str(out)]) == 0
    assert _mode(out) == 0o777 & ~umask
    assert _mode(out / "params.safetensors") == 0o666 & ~umask


def test_laplacian_pe_cache_file(tmp_path, umask):
    from jaxfm.graph.laplacian import LaplacianPECache

    cache = LaplacianPECache(tmp_path / "pe")
    senders, receivers = np.array([0, 1, 2, 3]), np.array([1, 2, 3, 0])
    pe = cache.get(senders, receivers, 4, 2)
    (file,) = (tmp_path / "pe").iterdir()  # the cache file only, no temporary left behind
    assert file.suffix == ".npy"
    assert _mode(file) == 0o666 & ~umask
    fresh = LaplacianPECache(tmp_path / "pe")  # a disk hit reads it back
    np.testing.assert_array_equal(fresh.get(senders, receivers, 4, 2), pe)
    assert fresh.hits == 1
