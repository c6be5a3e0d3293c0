"""Tests for target transforms and the bound-preserving coherence correction."""

import numpy as np
import pytest
import xarray as xr

import downscale as ds
from downscale.models.transforms import (
    IdentityTransform,
    Log1pTransform,
    LogitTransform,
    coherent_correction,
    make_transform,
)


def _pair(rng, factor=5, shape=(4, 6), geographic=False):
    crs = "EPSG:4326" if geographic else "EPSG:32632"
    cell = 0.25 if geographic else 1000.0
    origin = (10.0, 55.0) if geographic else (0.0, 0.0)
    fine_grid = ds.grid.make_grid((shape[0] * factor, shape[1] * factor), cell, origin=origin, crs=crs)
    return fine_grid, factor


def test_round_trips():
    values = np.array([0.0, 0.1, 3.0, 250.0])
    t = Log1pTransform(0.0)
    np.testing.assert_allclose(t.inverse(t.forward(values)), values, rtol=1e-12)
    t = LogitTransform(0.0, 0.45)
    inner = np.array([0.01, 0.2, 0.44])
    np.testing.assert_allclose(t.inverse(t.forward(inner)), inner, rtol=1e-12)
    assert IdentityTransform().forward(3.0) == 3.0


def test_derivatives_match_finite_differences():
    z = np.linspace(-3, 3, 7)
    for t in (Log1pTransform(0.0), LogitTransform(0.0, 0.45), IdentityTransform()):
        h = 1e-6
        numeric = (t.inverse(z + h) - t.inverse(z - h)) / (2 * h)
        if isinstance(t, Log1pTransform):
            keep = z > 0  # the clip at the bound has no derivative below zero
            np.testing.assert_allclose(t.derivative(z)[keep], numeric[keep], rtol=1e-6)
        else:
            np.testing.assert_allclose(t.derivative(z), numeric, rtol=1e-6)


def test_make_transform_choices_and_errors():
    assert make_transform("none", (0.0, None)).name == "none"
    assert make_transform("log1p", (None, None)).low == 0.0
    with pytest.raises(ValueError, match="needs both bounds"):
        make_transform("logit", (0.0, None))
    with pytest.raises(ValueError, match="transform must be"):
        make_transform("sqrt", (0.0, None))


@pytest.mark.parametrize("geographic", [False, True])
@pytest.mark.parametrize("bounds", [(None, None), (0.0, None), (0.0, 0.45), (None, 10.0)])
def test_correction_is_exact_and_within_bounds(rng, bounds, geographic):
    grid, factor = _pair(rng, geographic=geographic)
    low, high = bounds
    lo = -5.0 if low is None else low
    hi = 15.0 if high is None else high
    span = hi - lo
    prediction = lo + span * rng.uniform(size=(grid.sizes["y"], grid.sizes["x"])) ** 2
    prediction[:factor, :factor] = (
        lo if low is not None else prediction[:factor, :factor]
    )  # a block at the bound
    fine = xr.DataArray(prediction, dims=("y", "x"), coords=grid.coords)
    fine = ds.grid.set_crs(fine, ds.grid.get_crs(grid))
    coarse = ds.grid.block_mean(fine, factor).copy()
    target = lo + span * rng.uniform(0.02, 0.98, size=coarse.shape)
    if low is not None:
        target[0, 1] = low  # a dry coarse cell
    if high is not None:
        target[1, 1] = high  # a saturated one
    target[0, 0] = lo + 0.3 * span  # the block at the bound must be raised
    coarse = coarse.copy(data=target)
    out = coherent_correction(fine, coarse, bounds)
    back = ds.grid.block_mean(out, factor)
    np.testing.assert_allclose(back.values, target, rtol=1e-12, atol=1e-12 * span)
    if low is not None:
        assert out.values.min() >= low
        assert np.all(out.values[:factor, factor : 2 * factor] == low)  # dry stays dry
    if high is not None:
        assert out.values.max() <= high


def test_dry_pixels_stay_dry_and_nan_stays_nan(rng):
    grid, factor = _pair(rng)
    values = rng.gamma(0.5, 2.0, size=(grid.sizes["y"], grid.sizes["x"]))
    values[values < 0.5] = 0.0
    values[3, 4] = np.nan
    fine = xr.DataArray(values, dims=("y", "x"), coords=grid.coords)
    coarse = ds.grid.block_mean(fine, factor) * 1.7
    out = coherent_correction(fine, coarse, (0.0, None))
    assert np.all(out.values[values == 0.0] == 0.0)
    assert np.isnan(out.values[3, 4])
    np.testing.assert_allclose(ds.grid.block_mean(out, factor).values, coarse.values, rtol=1e-12)


def test_nan_coarse_cells_leave_blocks_unchanged(rng):
    grid, factor = _pair(rng)
    fine = xr.DataArray(
        rng.uniform(size=(grid.sizes["y"], grid.sizes["x"])), dims=("y", "x"), coords=grid.coords
    )
    coarse = ds.grid.block_mean(fine, factor) + 0.1
    coarse[0, 0] = np.nan
    out = coherent_correction(fine, coarse, (0.0, 1.0))
    np.testing.assert_array_equal(out.values[:factor, :factor], fine.values[:factor, :factor])
