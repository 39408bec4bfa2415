"""Issue 12 item 1: ``jaxfm convert`` must never delete what is in OUT (or SRC)."""

import json
import shutil

import pytest
from crafted import snapshot_tree

from converters.cli import main as convert_main
from jaxfm.cli import main as jaxfm_main

HF = "vit_hf_small"


@pytest.fixture
def src(tmp_path, fixtures_dir):
    """A private copy of a small HF ViT checkpoint directory, with a sibling file beside it."""
    root = tmp_path / "models"
    shutil.copytree(fixtures_dir / HF, root / HF)
    (root / "sibling-notes.txt").write_text("not a model")
    return root / HF


def _convert(capsys, *args):
    rc = convert_main(["vit", *map(str, args)])
    return rc, capsys.readouterr()


def test_out_holding_user_files_is_refused_and_kept(tmp_path, src, capsys):
    out = tmp_path / "results"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("two years of work")
    (out / "sub" / "data.csv").write_text("1,2,3")
    before = snapshot_tree(out)
    rc, cap = _convert(capsys, src, out)
    assert rc == 2
    assert str(out) in cap.err and "not empty" in cap.err and "thesis.tex" in cap.err
    assert snapshot_tree(out) == before


def test_out_holding_user_files_is_refused_even_with_overwrite(tmp_path, src, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"name": "my own config, not a model"}))
    before = snapshot_tree(out)
    rc, cap = _convert(capsys, src, out, "--overwrite")
    assert rc == 2 and "not a jaxfm model directory" in cap.err
    assert snapshot_tree(out) == before


@pytest.mark.parametrize("where", ["src", "parent", "inside"])
def test_out_overlapping_src_is_refused(src, capsys, where):
    out = {"src": src, "parent": src.parent, "inside": src / "flax"}[where]
    before = snapshot_tree(src.parent)
    rc, cap = _convert(capsys, src, out, "--overwrite")
    assert rc == 2
    assert "source" in cap.err and str(out) in cap.err
    assert snapshot_tree(src.parent) == before, "SRC and its siblings must be untouched"
    assert not (src / "flax").exists()


def test_earlier_model_dir_needs_overwrite(tmp_path, src, capsys):
    out = tmp_path / "out"
    assert _convert(capsys, src, out)[0] == 0
    first = snapshot_tree(out)
    rc, cap = _convert(capsys, src, out)
    assert rc == 2 and "--overwrite" in cap.err and "vit" in cap.err
    assert snapshot_tree(out) == first
    rc, cap = _convert(capsys, src, out, "--overwrite")
    assert rc == 0, cap.err
    assert (out / "params.safetensors").is_file()


def test_empty_or_absent_out_is_written(tmp_path, src, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _convert(capsys, src, empty)[0] == 0
    assert sorted(p.name for p in empty.iterdir()) == [
        "README.md",  # the model card
        "config.json",
        "params.safetensors",
    ]
    assert _convert(capsys, src, tmp_path / "new" / "out")[0] == 0


def test_jaxfm_convert_refuses_too(tmp_path, src, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    assert jaxfm_main(["convert", "vit", str(src), str(out)]) == 2
    assert (out / "keep.txt").read_text() == "keep"
    assert "not empty" in capsys.readouterr().err
