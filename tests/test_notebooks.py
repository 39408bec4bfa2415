"""The notebooks in experiments/notebooks run top to bottom and produce their key numbers.

Each notebook is executed with nbclient on a ``python3`` kernel of the running interpreter, in a
temporary working directory, with ``JAXFM_SKIP_INSTALL=1`` (jaxfm is already importable, so the
Colab install cell does nothing) and ``JAXFM_SOURCE`` pointing at this checkout (where the ViT
notebook finds the shipped converter fixture). Every cell gets at most ``CELL_TIMEOUT_S`` seconds
and the whole notebook at most ``NOTEBOOK_BUDGET_S``: each cell's timeout is the smaller of the
two remaining limits, so a notebook that overruns its budget fails with a timeout.

The execution tests are ``slow`` (about one to three minutes per notebook on 2 CPU cores). The
fast tests check what is stored: valid nbformat, outputs cleared, the install cell first, and
imports from the library (never a copy of it).
"""

import ast
import json
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "experiments" / "notebooks"
NOTEBOOKS = ("zero_shot_fimp_vit", "graphfm_embed_and_mft", "attention_maps")

CELL_TIMEOUT_S = 600
NOTEBOOK_BUDGET_S = 900

# Top-level modules a notebook may import besides the standard library: the library, its
# dependencies, and IPython's display helpers (present in every Jupyter / Colab kernel).
ALLOWED_IMPORTS = {"jaxfm", "converters", "jax", "numpy", "optax", "matplotlib", "scipy", "IPython"}

# The line each notebook prints with its key numbers: name=value pairs after "RESULT".
_RESULT = re.compile(r"^RESULT (.*)$", re.MULTILINE)


def _read(name: str) -> dict:
    return json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_clean_and_uses_the_library(name):
    nb = _read(name)
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and any(c["cell_type"] == "markdown" for c in nb["cells"])
    for i, cell in enumerate(code):
        assert cell["outputs"] == [], f"{name}: code cell {i} has stored outputs (clear them)"
        assert cell["execution_count"] is None, f"{name}: code cell {i} has an execution count"
    install = _source(code[0])
    assert "JAXFM_REPO" in install and "JAXFM_SKIP_INSTALL" in install
    assert 'f"jaxfm @ git+{JAXFM_REPO}"' in install and "JAXFM_WHEEL" in install
    assert "python -m build" in install  # says how to get jaxfm into Colab
    assert "github.com/jaxfm" not in install, "no default URL: jaxfm has no public repository"
    modules, defined = set(), set()
    for cell in code:
        tree = ast.parse(_source(cell))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules.add((node.module or "").split(".")[0])
            elif isinstance(node, ast.ClassDef):
                defined.add(node.name)
    third_party = modules - set(sys.stdlib_module_names)
    assert third_party <= ALLOWED_IMPORTS, f"{name}: imports {third_party - ALLOWED_IMPORTS}"
    assert "jaxfm" in modules
    assert not defined, f"{name}: defines classes {defined}; notebooks use the library's"


def _results(nb) -> dict[str, float]:
    text = ""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                text += out["text"]
    found = {}
    for line in _RESULT.findall(text):
        for pair in line.split():
            key, _, value = pair.partition("=")
            found[key] = float(value)
    return found


def _images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") in ("display_data", "execute_result")
    )


def _execute(name: str, workdir: Path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to run the notebooks")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to run the notebooks")
    pytest.importorskip("ipykernel", reason="ipykernel is needed to run the notebooks")
    monkeypatch.setenv("JAXFM_SKIP_INSTALL", "1")
    monkeypatch.setenv("JAXFM_SOURCE", str(REPO))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the plots
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    deadline = time.monotonic() + NOTEBOOK_BUDGET_S

    def cell_timeout(cell) -> int:
        return max(1, min(CELL_TIMEOUT_S, int(deadline - time.monotonic())))

    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",  # jupyter_client runs a "python" kernel argv as sys.executable
        timeout=CELL_TIMEOUT_S,
        timeout_func=cell_timeout,
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.monotonic()
    client.execute()
    seconds = time.monotonic() - start
    print(f"{name}: executed in {seconds:.1f} s; {_results(nb)}")
    return nb, seconds


@pytest.mark.slow
def test_zero_shot_fimp_vit_notebook(tmp_path, monkeypatch):
    nb, _ = _execute("zero_shot_fimp_vit", tmp_path, monkeypatch)
    r = _results(nb)
    # Raw pixels are linearly separable here; the random-weight fixture's embeddings are weaker
    # but must carry class information well above the majority class.
    assert r["raw_pixels_test_accuracy"] > 0.9, r
    assert r["fimp_vit_test_accuracy"] > r["chance"] + 0.2, r
    assert _images(nb) >= 2


@pytest.mark.slow
def test_graphfm_embed_and_mft_notebook(tmp_path, monkeypatch):
    nb, _ = _execute("graphfm_embed_and_mft", tmp_path, monkeypatch)
    r = _results(nb)
    assert r["embedding_rows"] == r["num_nodes"] and r["embedding_dim"] >= 8, r
    assert r["mft_test_accuracy"] > r["chance"] + 0.15, r
    assert r["pretrain_final_loss"] < r["pretrain_first_loss"], r
    assert _images(nb) >= 2


@pytest.mark.slow
def test_attention_maps_notebook(tmp_path, monkeypatch):
    nb, _ = _execute("attention_maps", tmp_path, monkeypatch)
    r = _results(nb)
    assert r["test_r2"] > 0.0, r  # better than predicting each gene's mean
    # Every query token's attention over the keys of one sender sums to one, so a cell's map
    # averaged over its neighbours (and heads) has rows that sum to one as well.
    assert abs(r["cell_map_row_sum"] - 1.0) < 1e-3, r
    assert r["cell_neighbours"] >= 1, r
    assert _images(nb) >= 2
