"""Helpers of the simulator tests: poisoned outputs and the comparison with a reference."""

from __future__ import annotations

import numpy as np


def poisoned(shape, dtype=np.float32):
    """An output array filled with NaN (or -1 for integers), so unwritten elements show."""
    return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype)


def assert_close(out, ref, rtol=1e-5):
    """Every element written, and within rtol of the reference's largest magnitude."""
    assert np.isfinite(out).all(), "unwritten (NaN) or overflowed outputs"
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1e-30, float(np.abs(ref).max())))
