"""``convert`` CLI: end to end, verification table, and OUT untouched on every failure."""

import pickle
import shutil
import zipfile

import numpy as np
import pytest

from converters.cli import main
from converters.errors import ConversionError
from converters.sources import is_hub_id, resolve_source
from jaxfm.foundation import load_pretrained
from jaxfm.model_dir import save_model_dir

HF, TIMM = "vit_hf_small", "vit_timm_small"


def _snapshot(root):
    """Every file under ``root`` (and its siblings) with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def old_out(tmp_path):
    """An existing OUT from an earlier conversion; must survive failed conversions intact."""
    out = tmp_path / "work" / "out"
    save_model_dir(out, {"w": np.zeros(2, np.float32)}, {"family": "vit", "old": True})
    (out / "marker.txt").write_text("previous model")
    return out


def _assert_untouched(out, before):
    parent = out.parent
    assert _snapshot(parent) == before, "OUT (and its parent) must be left exactly as it was"


@pytest.mark.parametrize("name", [HF, TIMM])
def test_convert_and_verify(tmp_path, fixtures_dir, capsys, name):
    src = fixtures_dir / name
    out = tmp_path / "out"
    rc = main(["convert", "vit", str(src), str(out), "--verify", str(src / "golden.npz")])
    text = capsys.readouterr().out
    assert rc == 0, text
    for tensor in ("last_hidden_state", "hidden_states", "patch_embeddings", "attentions_layer0"):
        assert f"| {tensor} |" in text
    assert "MISMATCH" not in text and "all within tolerance" in text
    model, variables = load_pretrained(out)
    assert model.config.layout in ("hf", "timm") and "embeddings" in variables["params"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging left behind"


def test_verify_mismatch_exits_nonzero_and_keeps_out(tmp_path, fixtures_dir, capsys, old_out):
    src = fixtures_dir / HF
    with np.load(src / "golden.npz") as z:
        golden = dict(z)
    golden["pooler_output"] = golden["pooler_output"] + 1e-3
    np.savez(tmp_path / "bad_golden.npz", **golden)
    before = _snapshot(old_out.parent)
    bad = str(tmp_path / "bad_golden.npz")
    rc = main(["vit", str(src), str(old_out), "--verify", bad, "--overwrite"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "| pooler_output |" in captured.out and "MISMATCH" in captured.out
    assert "pooler_output" in captured.err and "not written" in captured.err
    _assert_untouched(old_out, before)


def _evil_checkpoint(path, sentinel):
    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {sentinel}",)

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pytorch_model/data.pkl", pickle.dumps({"cls_token": Evil()}, protocol=2))
        z.writestr("pytorch_model/byteorder", "little")


@pytest.mark.parametrize("existing", [False, True])
def test_malicious_pickle(tmp_path, fixtures_dir, capsys, old_out, existing):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(fixtures_dir / TIMM / "config.json", src)
    sentinel = tmp_path / "pwned"
    _evil_checkpoint(src / "pytorch_model.bin", sentinel)
    out = old_out if existing else old_out.parent / "new_out"
    before = _snapshot(old_out.parent)
    rc = main(["convert", "vit", str(src), str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "system" in err and "pytorch_model.bin" in err and "refusing" in err
    assert not sentinel.exists(), "the pickled code must never run"
    _assert_untouched(old_out, before)


@pytest.mark.parametrize("problem", ["truncated", "missing", "wrong_family", "renamed"])
def test_errors_leave_out_untouched(tmp_path, fixtures_dir, shared_dir, capsys, old_out, problem):
    src = tmp_path / "src"
    if problem == "wrong_family":
        src = fixtures_dir / "scgpt_small_torch"
        if not src.is_dir():
            src = shared_dir / "fixtures" / "scgpt_small_torch"
    elif problem != "missing":
        shutil.copytree(fixtures_dir / TIMM, src)
        ckpt = src / "pytorch_model.bin"
        raw = ckpt.read_bytes()
        if problem == "truncated":
            ckpt.write_bytes(raw[: len(raw) * 2 // 3])
        else:  # renamed key: rename a storage-carrying key inside the pickle
            with zipfile.ZipFile(ckpt) as z:
                members = {n: z.read(n) for n in z.namelist()}
            pkl = "pytorch_model/data.pkl"
            members[pkl] = members[pkl].replace(b"blocks.1.norm2.weight", b"blocks.1.norm9.weight")
            with zipfile.ZipFile(ckpt, "w") as z:
                for n, data in members.items():
                    z.writestr(n, data)
    before = _snapshot(old_out.parent)
    rc = main(["convert", "vit", str(src), str(old_out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2, err
    expected = {
        "truncated": "pytorch_model.bin",
        "missing": "does not exist",
        "wrong_family": "scGPT checkpoint, not ViT",
        "renamed": "blocks.1.norm9.weight",
    }[problem]
    assert expected in err
    _assert_untouched(old_out, before)


def test_offline_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "out"
    rc = main(["convert", "vit", "google/vit-base-patch16-224", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "offline" in err and "local directory" in err
    assert not out.exists()
    with pytest.raises(ConversionError, match="pass its local directory"):
        resolve_source("google/vit-base-patch16-224", filenames=["config.json"])


def test_sources(tmp_path, fixtures_dir):
    assert resolve_source(str(fixtures_dir / HF)) == fixtures_dir / HF
    assert is_hub_id("google/vit-base-patch16-224") and is_hub_id("hf://org/model@main")
    assert not is_hub_id("model.bin") and not is_hub_id("a/b/c")
    with pytest.raises(ConversionError, match="does not exist"):
        resolve_source(str(tmp_path / "not" / "here.bin"))


def test_usage_errors(capsys):
    assert main(["convert", "nope", "a", "b"]) == 2
    assert main(["--help"]) == 0
    assert "--verify" in capsys.readouterr().out


def test_offline_hub_id_served_from_cache(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE with a cached snapshot: huggingface_hub serves it, no refusal first."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    commit = "0" * 40
    repo = cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    got = resolve_source("org/tiny", filenames=["config.json"])
    assert got == snap and (got / "config.json").exists()
