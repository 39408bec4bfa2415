"""FIMP-GenePT: gene-table file parsing (csv/json/npy/npz), pickle refusal, symbol matching with
the missing-gene report, and the grafted table inside the gene tokenizer."""

import pickle

import jax
import numpy as np
import pytest

from jaxfm.fimp import FIMPConfig, GeneTokenizerConfig
from jaxfm.fimp.genept import match_gene_table, read_gene_table
from jaxfm.fimp.pretrained import graft, graft_pairs
from jaxfm.fimp.tasks import FIMPTaskModel

EXPECTED = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [0.0, 3.0, 1.0]], np.float32)


@pytest.fixture
def genept_dir(fixtures_dir):
    return fixtures_dir / "genept"


@pytest.mark.parametrize("name", ["tiny.csv", "tiny.json", "tiny.npy"])
def test_formats_read_the_same_table(genept_dir, name):
    table = read_gene_table(genept_dir / name)
    assert table.genes == ("GAD2", "GFAP", "VIP")
    np.testing.assert_array_equal(table.embeddings, EXPECTED)
    assert table.dim == 3


def test_npz_and_headerless_csv(tmp_path):
    np.savez(tmp_path / "t.npz", genes=np.array(["A", "B"]), embeddings=np.eye(2))
    t = read_gene_table(tmp_path / "t.npz")
    assert t.genes == ("A", "B") and t.embeddings.dtype == np.float32
    (tmp_path / "h.csv").write_text("A,1,2\nB,3,4\n")
    np.testing.assert_array_equal(read_gene_table(tmp_path / "h.csv").embeddings, [[1, 2], [3, 4]])


def test_bad_tables_are_refused(tmp_path):
    bad = tmp_path / "t.pickle"
    bad.write_bytes(pickle.dumps({"A": [1.0]}))
    with pytest.raises(ValueError, match="pickled tables are refused"):
        read_gene_table(bad)
    cases = {
        "ragged.csv": ("A,1,2\nB,3\n", r"different widths \[1, 2\] \(e.g. gene 'B'\)"),
        "nan.csv": ("A,1,nan\n", "non-finite values for gene 'A'"),
        "dup.json": ('{"A": [1], "B": [2]}'.replace('"B"', '"A"'), None),
        "text.csv": ("gene,x\nA,1\nB,oops\n", r"line 3 \(gene 'B'\): non-numeric"),
        "list.json": ("[[1, 2]]", "expected a JSON object"),
        "strs.json": ('{"A": ["x"]}', "gene 'A': expected a list of numbers"),
        "t.tsv": ("A\t1\n", "unknown format '.tsv'"),
    }
    for name, (text, msg) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        if msg is None:  # JSON keeps the last duplicate key: one gene, no error
            assert read_gene_table(path).genes == ("A",)
            continue
        with pytest.raises(ValueError, match=msg):
            read_gene_table(path)
    np.save(tmp_path / "lonely.npy", np.eye(2))
    with pytest.raises(FileNotFoundError, match=r"lonely\.genes\.txt"):
        read_gene_table(tmp_path / "lonely.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.genes.txt").write_text("A\n")
    with pytest.raises(ValueError, match="pickled objects"):
        read_gene_table(tmp_path / "obj.npy")


def test_match_reports_missing_genes(genept_dir):
    table = read_gene_table(genept_dir / "tiny.csv")
    match = match_gene_table(table, ["Vip", "Sst", "GAD2", "Pvalb"])
    np.testing.assert_array_equal(match.found, [True, False, True, False])
    np.testing.assert_array_equal(match.table[0], EXPECTED[2])  # case-insensitive Vip -> VIP
    np.testing.assert_array_equal(match.table[2], EXPECTED[0])
    np.testing.assert_array_equal(match.table[[1, 3]], 0.0)  # missing: zero rows
    rep = match.report()
    assert (rep["genes"], rep["matched"], rep["missing"]) == (4, 2, 2)
    assert rep["missing_genes"] == ["Sst", "Pvalb"]
    with pytest.raises(ValueError, match="none of the dataset's 2 genes"):
        match_gene_table(table, ["X", "Y"])


def test_grafted_table_drives_the_gene_tokens(genept_dir):
    match = match_gene_table(read_gene_table(genept_dir / "tiny.json"), ["GFAP", "Nope", "VIP"])
    tok = GeneTokenizerConfig(num_genes=3, gene_embedding_dim=3)
    model = FIMPTaskModel(FIMPConfig(dim=8, tokenizer=tok), "celltype", num_classes=2)
    nodes = {
        "gene_ids": np.array([[0, 1], [2, 0]]),
        "values": np.ones((2, 2), np.float32),
        "token_mask": np.ones((2, 2), bool),
        "label": np.zeros(2, np.int32),
        "target_mask": np.ones(2, bool),
    }
    s = r = np.arange(2)
    params = model.init(jax.random.key(0), nodes, s, r)["params"]
    pairs = graft_pairs("genept", tokenizer="fimp/tokenizer")
    params, report = graft(params, {"gene_embedding/embedding": match.table}, pairs)
    assert report.loaded == ("fimp/tokenizer/gene_embedding/embedding",)
    table = params["fimp"]["tokenizer"]["gene_embedding"]["embedding"]
    np.testing.assert_array_equal(table, [EXPECTED[1], np.zeros(3), EXPECTED[2]])
    # The gene half of a token is gene_projection(table row) (concat: [value | gene]).
    from jaxfm.fimp.tokenizers import GeneTokenizer

    tok_params = params["fimp"]["tokenizer"]
    tokens, _ = GeneTokenizer(tok, dim=8).apply(
        {"params": tok_params}, nodes["gene_ids"], nodes["values"], nodes["token_mask"]
    )
    proj = tok_params["gene_projection"]
    want = EXPECTED[1] @ proj["kernel"] + proj["bias"]
    np.testing.assert_allclose(tokens[0, 0, 4:], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tokens[0, 1, 4:], proj["bias"], atol=1e-6)  # missing gene
    with pytest.raises(ValueError, match="mis-shaped 1: fimp/tokenizer/gene_embedding/embedding"):
        graft(params, {"gene_embedding/embedding": np.zeros((3, 5), np.float32)}, pairs)
