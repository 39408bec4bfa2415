"""Issue 12 item 7: -1 (any negative label) is "unlabelled" in every loader, never a class.

And a label >= the declared number of classes is an error naming the file.
"""

import numpy as np
import pytest

from jaxfm.data import split_nodes
from jaxfm.data.graph_formats import encode_labels, read_heterophilous_npz
from jaxfm.data.graph_formats_text import read_tu
from jaxfm.data.graph_validate import DatasetFormatError
from jaxfm.data.labels import UNLABELLED, class_labels
from jaxfm.fimp.data import prepare_fimp_data


def test_encode_labels_keeps_negatives_unlabelled():
    y, c = encode_labels(np.array([-1, 0, 2, 2, -5]), "f")
    assert c == 2 and y.tolist() == [-1, 0, 1, 1, -1]
    y, c = encode_labels(np.array([-1.0, 1.0, 0.0]), "f")
    assert c == 2 and y.tolist() == [-1, 1, 0]
    y, c = encode_labels(np.array([-3, 0, 1]), "f", num_classes=4)
    assert c == 4 and y.tolist() == [UNLABELLED, 0, 1]


def test_heterophilous_minus_one_is_not_a_class(tmp_path, fixtures_dir):
    with np.load(fixtures_dir / "graphs" / "heterophilous" / "tiny.npz") as f:
        arrays = dict(f)
    arrays["node_labels"] = np.array([-1, 1, 0, 1, 2])  # node 0 unlabelled
    arrays["train_masks"][:, 0] = True  # even if a public split lists it
    path = tmp_path / "roman-empire.npz"
    np.savez(path, **arrays)
    ds = read_heterophilous_npz(path)
    assert ds.num_classes == 3
    assert ds.y.tolist() == [-1, 1, 0, 1, 2]
    for split in ds.splits:
        assert not (split.train[0] or split.val[0] or split.test[0])


def _image_npz(path, labels, **extra):
    rng = np.random.default_rng(0)
    n = len(labels)
    np.savez(
        path,
        images=rng.uniform(size=(n, 8, 8, 3)).astype(np.float32),
        latlon=np.stack([rng.uniform(-50, 50, n), rng.uniform(-150, 150, n)], 1),
        labels=np.asarray(labels),
        **extra,
    )
    return path


def test_fimp_image_minus_one_never_trains(tmp_path):
    labels = [-1] * 6 + [0, 1, 2] * 6
    data = prepare_fimp_data("image", str(_image_npz(tmp_path / "geo.npz", labels)))
    assert data.num_classes == 3
    unlabelled = set(range(6))
    for name, idx in data.splits.items():
        assert not unlabelled & set(idx.tolist()), f"unlabelled nodes in the {name} split"
    assert sum(len(i) for i in data.splits.values()) == 18


def test_fimp_image_label_beyond_declared_classes(tmp_path):
    path = _image_npz(tmp_path / "geo.npz", [0, 1, 2] * 4, class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"geo\.npz: labels out of range: label 2 for 2"):
        prepare_fimp_data("image", str(path))


def test_class_labels_errors_name_the_file():
    with pytest.raises(DatasetFormatError, match=r"y\.csv: labels out of range"):
        class_labels(np.array([0, 5]), "y.csv", num_classes=5)
    with pytest.raises(DatasetFormatError, match=r"y\.csv: no labelled"):
        class_labels(np.array([-1, -1]), "y.csv")


def test_stratified_split_leaves_unlabelled_out():
    y = np.array([-1, 0, 0, 0, 1, 1, 1, -1, 0, 1])
    parts = split_nodes(len(y), (0.6, 0.2, 0.2), seed=0, stratify=y)
    covered = np.concatenate(parts)
    assert sorted(covered.tolist()) == np.flatnonzero(y >= 0).tolist()


def test_tu_minus_one_graph_labels_are_a_class(fixtures_dir):
    """The one format-defined exception: TU graph labels -1 / 1 are two classes."""
    ds = read_tu(fixtures_dir / "graphs" / "TU" / "TOY" / "raw")
    assert (ds.y >= 0).all() and ds.num_classes == 2
