"""A424 atlas reader, FMRIDataset and BrainLM patching."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfm.data import A424_NUM_REGIONS, FMRIDataset, fmri_patches, read_a424_coordinates

A424 = Path(__file__).resolve().parents[1] / "fixtures" / "fmri" / "A424_Coordinates.dat"


def test_read_a424_coordinates():
    xyz = read_a424_coordinates(A424)
    assert xyz.shape == (A424_NUM_REGIONS, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz[0], [14, -78, 4])  # first and last rows of the file
    np.testing.assert_array_equal(xyz[-1], [22, -38, -46])
    assert np.abs(xyz).max() < 120  # millimetres in MNI space


def test_read_a424_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.dat"):
        read_a424_coordinates(tmp_path / "missing.dat")
    lines = A424.read_text().splitlines()
    bad = tmp_path / "short.dat"
    bad.write_text("\n".join(lines[:10]))
    with pytest.raises(ValueError, match="10 regions, expected 424"):
        read_a424_coordinates(bad)
    assert read_a424_coordinates(bad, num_regions=None).shape == (10, 3)
    bad.write_text("\n".join([*lines[:2], "3 1.0 2.0"]))
    with pytest.raises(ValueError, match=r"short.dat:3: expected 4 columns"):
        read_a424_coordinates(bad, num_regions=None)
    bad.write_text("\n".join([*lines[:2], "3 x 2.0 1"]))
    with pytest.raises(ValueError, match=r"short.dat:3: non-numeric"):
        read_a424_coordinates(bad, num_regions=None)
    bad.write_text("\n".join([lines[1], lines[0]]))
    with pytest.raises(ValueError, match=r"indices must run 1\.\.2"):
        read_a424_coordinates(bad, num_regions=None)


def test_fmri_patches_numpy_and_jax():
    x = np.arange(2 * 3 * 40, dtype=np.float32).reshape(2, 3, 40)
    p = fmri_patches(x, 20)
    assert p.shape == (2, 3, 2, 20)
    np.testing.assert_array_equal(p[1, 2, 1], x[1, 2, 20:40])
    assert fmri_patches(jnp.asarray(x), 10).shape == (2, 3, 4, 10)
    with pytest.raises(ValueError, match="multiple of patch_size 20"):
        fmri_patches(x[..., :30], 20)


def test_fmri_dataset_container():
    coords = read_a424_coordinates(A424)[:5]
    ds = FMRIDataset(
        signals=np.zeros((2, 5, 40)),
        coords=coords,
        region_groups=[0, 1, 1, 0, 2],
        group_names=("visual", "default", "subcortical"),
    )
    assert (ds.num_recordings, ds.num_regions, ds.num_timepoints) == (2, 5, 40)
    assert ds.signals.dtype == np.float32 and ds.patches().shape == (2, 5, 2, 20)
    with pytest.raises(ValueError, match="coords"):
        FMRIDataset(signals=np.zeros((2, 4, 40)), coords=coords)
    with pytest.raises(ValueError, match="region_groups"):
        FMRIDataset(
            signals=np.zeros((2, 5, 40)),
            coords=coords,
            region_groups=[0, 1, 1, 0, 3],
            group_names=("a", "b", "c"),
        )
