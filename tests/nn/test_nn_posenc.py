"""Fixed sinusoidal encodings: exact values, layout, validation."""

import numpy as np
import pytest

from jaxfm.nn import sinusoidal_1d, sinusoidal_2d


def test_1d_values():
    pe = sinusoidal_1d(5, 6)
    omega = 1.0 / 10000 ** (np.arange(3) / 3)
    for pos in range(5):
        np.testing.assert_allclose(
            pe[pos], np.concatenate([np.sin(pos * omega), np.cos(pos * omega)]), atol=1e-6
        )
    assert pe.dtype == np.float32 and pe.shape == (5, 6)


def test_2d_known_position():
    gh, gw = 3, 4
    pe = sinusoidal_2d(gh, gw, 8)
    assert pe.shape == (12, 8)
    # Patch (row 1, col 2) is token 1 * 4 + 2; per half omega = [1, 1/100].
    expected = [
        np.sin(1),
        np.sin(0.01),
        np.cos(1),
        np.cos(0.01),
        np.sin(2),
        np.sin(0.02),
        np.cos(2),
        np.cos(0.02),
    ]
    np.testing.assert_allclose(pe[1 * gw + 2], expected, atol=1e-6)
    np.testing.assert_allclose(pe[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)


def test_validation():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_1d(3, 5)
    with pytest.raises(ValueError, match="multiple of 4"):
        sinusoidal_2d(2, 2, 6)
