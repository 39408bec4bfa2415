"""Issue 12 item 8: crashes and vague messages become clear errors naming the input.

CLI errors exit with status 2 and leave no partial output. A full disk is simulated with
``RLIMIT_FSIZE`` in a child process (writes past the limit fail with ``EFBIG``, in Python and
in the safetensors library's Rust writer alike).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from converters.cli import main as convert_main
from jaxfm.cli import main as jaxfm_main
from jaxfm.data.graph_formats import read_npz_graph
from jaxfm.data.graph_formats_io import read_npz
from jaxfm.data.graph_validate import DatasetFormatError
from jaxfm.fimp.data import prepare_fimp_data

REPO = Path(__file__).resolve().parents[2]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- fMRI with too few recordings ---------------------------------------------------------


@pytest.mark.parametrize("recordings", [0, 1, 2])
def test_fmri_with_too_few_recordings(tmp_path, capsys, recordings):
    path = tmp_path / "rest.npz"
    rng = np.random.default_rng(0)
    np.savez(path, signals=rng.normal(size=(recordings, 5, 40)), coords=rng.normal(size=(5, 3)))
    rc = jaxfm_main(["fimp", "train", "--task", "fmri", "--data", str(path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(path) in err and "at least 3 recordings" in err and f"got {recordings}" in err


# ---- embed --out ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "--checkpoint", "{ck}", "--dataset", "{ds}", "--out", "{out}"],
        [
            "embed",
            "--model",
            "fimp-vit",
            "--checkpoint",
            "{ck}",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
    ],
    ids=["graphfm", "fimp"],
)
def test_embed_out_existing_directory_fails_before_any_work(tmp_path, capsys, argv):
    out = tmp_path / "embeddings"
    out.mkdir()
    subs = {"ck": str(tmp_path / "no-such-checkpoint"), "ds": "nope.npz", "out": str(out)}
    rc = jaxfm_main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--out {out} is a directory" in err  # not a checkpoint error: checked first
    assert list(out.iterdir()) == [] and _leftovers(tmp_path) == []


# ---- a full disk --------------------------------------------------------------------------


def _run_with_file_size_limit(code: str, limit: int) -> subprocess.CompletedProcess:
    prelude = f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_convert_on_a_full_disk(tmp_path, fixtures_dir):
    src = fixtures_dir / "vit_hf_small"
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    code = f"""
        from converters.cli import main
        sys.exit(main(["vit", {str(src)!r}, {str(out)!r}]))
    """
    res = _run_with_file_size_limit(code, 64 * 1024)  # the parameters are ~340 KB
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"could not write {out}" in res.stderr
    assert list(out.parent.iterdir()) == [], "no partial output or staging directory is left"


def test_write_json_atomic_on_a_full_disk(tmp_path):
    target = tmp_path / "results.json"
    code = f"""
        from jaxfm.model_dir import OutputWriteError, write_json_atomic
        try:
            write_json_atomic({str(target)!r}, {{"x": list(range(5000))}})
        except OutputWriteError as e:
            print("OutputWriteError", e.errno, e)
    """
    res = _run_with_file_size_limit(code, 1024)
    assert "OutputWriteError" in res.stdout and str(target) in res.stdout, res.stderr
    assert list(tmp_path.iterdir()) == [], "no temporary file may be left"


def test_write_json_atomic_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    from jaxfm.model_dir import OutputWriteError, write_json_atomic

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputWriteError, match=r"could not write .*r\.json: No space left"):
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


# ---- converter key problems ---------------------------------------------------------------


def _vit_without(tmp_path, fixtures_dir, drop=(), change=None):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "vit"
    src.mkdir()
    shutil.copy(fixtures_dir / "vit_hf_small" / "config.json", src)
    state = load_file(fixtures_dir / "vit_hf_small" / "model.safetensors")
    for key in drop:
        del state[key]
    for key, fn in (change or {}).items():
        state[key] = np.ascontiguousarray(fn(state[key]))
    save_file(state, src / "model.safetensors")
    return src


def test_all_config_tensor_problems_are_listed(tmp_path, fixtures_dir, capsys):
    missing, flat = "encoder.layer.0.intermediate.dense.weight", "embeddings.position_embeddings"
    src = _vit_without(tmp_path, fixtures_dir, drop=[missing], change={flat: lambda w: w[0]})
    rc = convert_main(["vit", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert missing in err and flat in err and "expected a 3-D" in err, err
    assert not (tmp_path / "out").exists()


def test_renamed_key_is_reported_with_what_it_should_fill(tmp_path, fixtures_dir, capsys):
    """One run shows the key no rule matches *and* the parameter left missing."""
    from safetensors.numpy import load_file, save_file

    old = "encoder.layer.1.layernorm_after.weight"
    src = _vit_without(tmp_path, fixtures_dir)
    state = load_file(src / "model.safetensors")
    state[old.replace("after", "post")] = state.pop(old)
    save_file(state, src / "model.safetensors")
    rc = convert_main(["vit", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "encoder.layer.1.layernorm_post.weight" in err  # matches no rule
    assert "missing" in err and "encoder/layer_1/norm2/scale" in err  # and what is now absent


def test_mis_shaped_embedding_names_its_key(tmp_path, fixtures_dir, capsys):
    key = "embeddings.patch_embeddings.projection.weight"
    src = _vit_without(tmp_path, fixtures_dir, change={key: lambda w: w.reshape(w.shape[0], -1)})
    rc = convert_main(["vit", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and key in err and "4-D" in err
    assert "unpack" not in err


def test_mis_shaped_scgpt_gene_embedding_names_its_key(tmp_path, fixtures_dir, capsys):
    from safetensors.numpy import save_file

    from converters.checkpoint import read_state_dict

    fx = fixtures_dir / "scgpt_small_torch"
    src = tmp_path / "scgpt"
    src.mkdir()
    for name in ("args.json", "vocab.json"):
        shutil.copy(fx / name, src)
    state = {k: np.ascontiguousarray(v) for k, v in read_state_dict(fx / "best_model.pt").items()}
    key = "encoder.embedding.weight"
    state[key] = state[key].reshape(-1)  # [ntoken * d_model]
    save_file(state, src / "model.safetensors")
    rc = convert_main(["scgpt", str(src / "model.safetensors"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and key in err and "2-D" in err and "unpack" not in err


# ---- data files ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["image", "fmri"])
def test_text_file_given_as_npz(tmp_path, task):
    path = tmp_path / "data.npz"
    path.write_text("lat,lon,label\n1,2,3\n")
    with pytest.raises(ValueError, match=r"data\.npz: not a readable \.npz") as info:
        prepare_fimp_data(task, str(path))
    assert "allow_pickle" not in str(info.value)


def test_csr_index_out_of_range_names_the_file(tmp_path, fixtures_dir):
    arrays = read_npz(fixtures_dir / "graphs" / "GraphData" / "tiny.npz")
    adj = arrays["adj_matrix"].item()
    adj.indices[0] = 10_000  # beyond the matrix; never passed through the constructor's check
    arrays["adj_matrix"] = np.array(adj, dtype=object)
    path = tmp_path / "cora.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetFormatError, match=r"cora\.npz.*(index|indices)"):
        read_npz_graph(path)


def test_nan_latlon_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    latlon = rng.uniform(-40, 40, (12, 2))
    latlon[3, 1] = np.nan
    path = tmp_path / "geo.npz"
    np.savez(path, images=rng.uniform(size=(12, 8, 8, 3)), latlon=latlon, labels=np.arange(12) % 3)
    with pytest.raises(ValueError, match=r"geo\.npz: latlon contains 1 NaN"):
        prepare_fimp_data("image", str(path))


def test_sparse_check_accepts_valid_matrices():
    """The new CSR check must not refuse well-formed pickled matrices."""
    m = sp.random(6, 5, density=0.4, format="csr", random_state=0)
    import pickle

    from jaxfm.data.graph_formats_io import load_restricted_pickle

    back = load_restricted_pickle(pickle.dumps({"m": m, "c": m.tocoo()}), "ok.pkl")
    assert (back["m"] != m).nnz == 0 and json.dumps(back["m"].shape) == "[6, 5]"


@pytest.mark.slow
def test_graphfm_embed_writes_a_readable_file(tmp_path, fixtures_dir, capsys):
    """End to end: a tiny pretrained GraphFM, then ``jaxfm embed`` into a new file."""
    from jaxfm.train.graphfm_pretrain import PretrainConfig, pretrain
    from jaxfm.train.optim import OptimizerConfig

    tiny = dict(
        dim=16, num_latents=4, encoder_depth=1, decoder_depth=2, cross_heads=2, self_heads=2,
        decoder_heads=2, pe_dim=4, pe_width=4, signnet_hidden=8, feature_dim=16, num_neighbors=3,
    )  # fmt: skip
    cfg = PretrainConfig(
        model_overrides=tiny, neighbors=3, synthetic_graphs=2, synthetic_nodes=(30, 60), steps=1,
        node_budget=256, graph_budget=4, target_budget=32, workdir=str(tmp_path / "run"),
        optimizer=OptimizerConfig(name="lamb", learning_rate=3e-3, schedule="constant"),
    )  # fmt: skip
    pretrain(cfg, progress=False)
    out = tmp_path / "emb" / "tiny.npy"
    dataset = fixtures_dir / "graphs" / "heterophilous" / "tiny.npz"
    argv = ["embed", "--checkpoint", str(tmp_path / "run" / "model"), "--dataset", str(dataset)]
    old_umask = os.umask(0o022)
    try:
        assert jaxfm_main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    finally:
        os.umask(old_umask)
    assert np.load(out).shape[0] == 5
    assert os.stat(out).st_mode & 0o777 == 0o644, "the umask decides, not mkstemp's 0600"
    assert _leftovers(out.parent) == []
