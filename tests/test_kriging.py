"""ATPK: coherence, covariances against brute force, agreement with PyKrige, NaN and edge patterns,
time stacks, dask tiling, bad input."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from numpy.testing import assert_allclose
from pykrige.ok import OrdinaryKriging

import downscale as ds
from downscale.kriging import ATPK, VariogramFitWarning, VariogramModel
from downscale.kriging.atpk import _kernel_covariances
from downscale.kriging.variogram import psf_kernel

CELL = 25_000.0
MODEL = VariogramModel("exponential", sill=2.0, range=150_000.0)


def coarse_field(rng, shape=(12, 12), holes=False, crs="EPSG:32632", cell=CELL, origin=(0.0, 0.0)):
    grid = ds.grid.make_grid(shape[-2:], cell, origin=origin, crs=crs)
    values = np.cumsum(rng.normal(size=shape), axis=-1) + 10.0
    if holes:
        values[..., 3, 4] = np.nan
        values[..., 7:9, 2] = np.nan
        values[..., 0, 0] = np.nan
    dims = ("time", "y", "x") if len(shape) == 3 else ("y", "x")
    coords = dict(grid.coords)
    if len(shape) == 3:
        coords["time"] = np.arange(shape[0])
    return ds.grid.set_crs(xr.DataArray(values, dims=dims, coords=coords, name="residual"), crs)


# ------------------------------------------------------------------ covariances


@pytest.mark.parametrize("psf", ["box", "gaussian"])
def test_block_covariances_match_brute_force(psf):
    """Offsets-only covariances == explicit PSF-weighted sums over pairs of fine cells."""
    f, half, cell = 3, 1, (2000.0, 1000.0)
    model = VariogramModel("exponential", sill=1.0, range=5000.0)
    block, point = _kernel_covariances(model.correlation, cell, f, half, psf, 1.0)
    kernel, first = psf_kernel(psf, f, 1.0)
    positions = np.arange(kernel.size) + first  # fine-cell indices of the PSF support of block 0
    fine = (cell[0] / f, cell[1] / f)

    def cov(dy, dx):
        return model.correlation(np.hypot(dy * fine[0], dx * fine[1]))

    for dby in range(-2, 3):
        for dbx in range(-2, 3):
            ay = positions[:, None, None, None]
            ax = positions[None, :, None, None]
            by = positions[None, None, :, None] + dby * f
            bx = positions[None, None, None, :] + dbx * f
            weights = np.einsum("a,b,c,d->abcd", kernel, kernel, kernel, kernel)
            expected = float((weights * cov(by - ay, bx - ax)).sum())
            assert_allclose(block[dby + 2, dbx + 2], expected, rtol=1e-12)
    for n, (dby, dbx) in enumerate([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]):
        for p, (py, px) in enumerate([(i, j) for i in range(f) for j in range(f)]):
            by = positions[:, None] + dby * f
            bx = positions[None, :] + dbx * f
            expected = float((np.outer(kernel, kernel) * cov(by - py, bx - px)).sum())
            assert_allclose(point[n, p], expected, rtol=1e-12)


# -------------------------------------------------------------------- coherence


@pytest.mark.parametrize("factor", [2, 4, 5, 10, 25, 100])
@pytest.mark.parametrize("holes", [False, True])
def test_coherence_every_factor(rng, factor, holes):
    shape = (9, 9) if factor == 100 else (12, 12)
    coarse = coarse_field(rng, shape, holes=holes)
    model = ATPK(variogram=MODEL).fit(coarse)
    model._polish = False  # the raw kriging result, without the round-off clean-up
    fine = model.predict(factor)
    block = ds.grid.block_mean(fine, factor)
    valid = np.isfinite(coarse.values)
    assert_allclose(block.values[valid], coarse.values[valid], rtol=1e-9)
    # NaN coarse cells give NaN blocks; valid ones are fully valid, even next to holes.
    per_block = np.isnan(fine.values).reshape(shape[0], factor, shape[1], factor).sum(axis=(1, 3))
    assert_allclose(per_block, np.where(valid, 0, factor * factor))
    # With the clean-up (the default) it is exact to round-off.
    polished = ATPK(variogram=MODEL).fit(coarse).predict(factor)
    assert_allclose(ds.grid.block_mean(polished, factor).values[valid], coarse.values[valid], rtol=1e-13)
    assert_allclose(polished, fine, rtol=1e-9)


def test_coherence_on_geographic_grid(rng):
    """Area-weighted block means (spherical cell areas) of the prediction equal the coarse values."""
    coarse = coarse_field(rng, (8, 10), holes=True, crs="EPSG:4326", cell=0.25, origin=(5.0, 55.0))
    fine = ATPK(variogram=VariogramModel("exponential", 2.0, 120_000.0)).fit(coarse).predict(10)
    valid = np.isfinite(coarse.values)
    assert_allclose(ds.grid.block_mean(fine, 10).values[valid], coarse.values[valid], rtol=1e-13)


def test_simple_kriging_is_coherent_and_uses_the_mean(rng):
    coarse = coarse_field(rng, holes=True)
    fine = ATPK(variogram=MODEL, kind="simple", mean=10.0).fit(coarse).predict(5)
    valid = np.isfinite(coarse.values)
    assert_allclose(ds.grid.block_mean(fine, 5).values[valid], coarse.values[valid], rtol=1e-12)
    # A constant field equal to the mean is reproduced everywhere.
    flat = coarse.copy(data=np.full(coarse.shape, 10.0))
    assert_allclose(ATPK(variogram=MODEL, kind="simple", mean=10.0).fit(flat).predict(3), 10.0)


def test_nugget_smooths_and_is_not_coherent(rng):
    coarse = coarse_field(rng)
    model = ATPK(variogram=VariogramModel("exponential", 2.0, 150_000.0, nugget=1.0)).fit(coarse)
    assert not model.coherent
    fine = model.predict(4)
    assert not np.allclose(ds.grid.block_mean(fine, 4), coarse, rtol=1e-6)
    # Smoothing: the block means vary less than the data.
    assert float(ds.grid.block_mean(fine, 4).std()) < float(coarse.std())


# --------------------------------------------------------------------- variance


def test_variance_is_non_negative_and_grows_away_from_data(rng):
    coarse = coarse_field(rng, holes=True)
    fine, var = ATPK(variogram=MODEL).fit(coarse).predict(5, return_variance=True)
    assert var.dims == fine.dims and var.shape == fine.shape
    assert float(var.min()) >= 0.0
    assert float(var.max()) <= MODEL.sill
    assert np.array_equal(np.isnan(var.values), np.isnan(fine.values))
    # Next to the hole at (3, 4) the variance is larger than in the same sub-pixel of a full interior cell.
    assert float(var[3 * 5 + 2, 5 * 5 + 2]) > float(var[5 * 5 + 2, 6 * 5 + 2])


# ------------------------------------------------------------ against PyKrige


def _pykrige(coarse, factor, model, n_closest):
    x, y = np.meshgrid(coarse.x.values, coarse.y.values)
    ok = OrdinaryKriging(
        x.ravel(),
        y.ravel(),
        coarse.values.ravel(),
        variogram_model=model.model,
        variogram_parameters=model.to_pykrige(),
    )
    fine = ds.grid.fine_grid(coarse, factor)
    values, variance = ok.execute(
        "grid", fine.x.values, fine.y.values, backend="loop", n_closest_points=n_closest
    )
    return np.asarray(values), np.asarray(variance)


def test_point_support_matches_pykrige_globally(rng):
    """A 5 x 5 coarse grid inside a 9 x 9 window: every cell is a neighbour of every pixel."""
    coarse = coarse_field(rng, (5, 5))
    model = VariogramModel("exponential", sill=1.3, range=100_000.0)
    fine, var = ATPK(variogram=model, neighbours=9, psf="point").fit(coarse).predict(4, return_variance=True)
    expected, expected_var = _pykrige(coarse, 4, model, 25)
    assert_allclose(fine.values, expected, rtol=1e-6)
    assert_allclose(var.values, expected_var, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("model_name", ["spherical", "gaussian"])
def test_point_support_matches_pykrige_where_neighbourhood_is_unambiguous(rng, model_name):
    """At the centre pixel of interior blocks the 25 closest cells are exactly the 5 x 5 window."""
    coarse = coarse_field(rng, (11, 11))
    model = VariogramModel(model_name, sill=1.3, range=120_000.0)
    fine = ATPK(variogram=model, neighbours=5, psf="point").fit(coarse).predict(3)
    expected, _ = _pykrige(coarse, 3, model, 25)
    centres = (slice(2 * 3 + 1, 9 * 3, 3),) * 2
    assert_allclose(fine.values[centres], expected[centres], rtol=1e-6)


# ------------------------------------------------------------- stacks and dask


def test_time_stack_equals_each_time_step(rng):
    coarse = coarse_field(rng, (3, 10, 11))
    coarse[1, 2, 3] = np.nan  # time step 1 has its own NaN pattern
    coarse[2, 5:7, 5] = np.nan
    model = ATPK(variogram=MODEL).fit(coarse)
    fine, var = model.predict(4, return_variance=True)
    assert fine.dims == ("time", "y", "x") and list(fine.time.values) == [0, 1, 2]
    for t in range(3):
        one, one_var = ATPK(variogram=MODEL).fit(coarse.isel(time=t)).predict(4, return_variance=True)
        assert_allclose(fine.isel(time=t), one, rtol=1e-12)
        assert_allclose(var.isel(time=t), one_var, rtol=1e-12)


def test_weights_are_reused_across_time_and_calls(rng):
    coarse = coarse_field(rng, (4, 12, 12))
    model = ATPK(variogram=MODEL).fit(coarse)
    model.predict(5)
    # One system for the interior, and for each of the 2 x 2 edge rows/columns: 5 x 5 row/column types.
    assert len(model._plans[5].cache) == 25
    holes = ATPK(variogram=MODEL).fit(coarse_field(rng, (4, 12, 12), holes=True))
    holes.predict(5)
    cached = len(holes._plans[5].cache)
    holes.predict(5)
    assert len(holes._plans[5].cache) == cached < 4 * 12 * 12


def test_dask_tiles_equal_in_memory(rng):
    coarse = coarse_field(rng, (2, 13, 11), holes=True)
    expected, expected_var = ATPK(variogram=MODEL, neighbours=7).fit(coarse).predict(5, return_variance=True)
    lazy = coarse.copy(data=da.from_array(coarse.values, chunks=(1, 4, 5)))
    fine, var = ATPK(variogram=MODEL, neighbours=7).fit(lazy).predict(5, return_variance=True)
    assert isinstance(fine.data, da.Array)
    assert_allclose(fine.values, expected.values, rtol=1e-12, atol=1e-12)
    assert_allclose(var.values, expected_var.values, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------- fitted variograms


def test_fit_estimates_and_deconvolves_variogram(rng):
    coarse = coarse_field(rng, (16, 16), holes=True)
    model = ATPK(variogram="exponential").fit(coarse)
    assert model.areal_variogram_.model == "exponential"
    assert model.variogram_.sill >= model.areal_variogram_.sill
    fine, var = model.predict(ds.grid.fine_grid(coarse, 4), return_variance=True)
    valid = np.isfinite(coarse.values)
    assert_allclose(ds.grid.block_mean(fine, 4).values[valid], coarse.values[valid], rtol=1e-12)
    assert fine.attrs == coarse.attrs and ds.grid.get_crs(fine) == ds.grid.get_crs(coarse)


def test_flat_field_falls_back_with_warning(rng):
    coarse = coarse_field(rng, (8, 8))
    flat = coarse.copy(data=np.full(coarse.shape, 3.0))
    with pytest.warns(VariogramFitWarning, match="zero variance"):
        model = ATPK().fit(flat)
    fine, var = model.predict(3, return_variance=True)
    assert_allclose(fine, 3.0)
    assert_allclose(var, 0.0)


# ------------------------------------------------------------------ bad input


def test_irregular_coordinates_are_refused(rng):
    coarse = coarse_field(rng, (6, 6))
    x = coarse.x.values.copy()
    x[3] += 5000.0
    with pytest.raises(ValueError, match="'x' coordinate is not regular"):
        ATPK(variogram=MODEL).fit(coarse.assign_coords(x=x))


def test_too_few_valid_cells(rng):
    coarse = coarse_field(rng, (6, 6))
    sparse = coarse.where(np.arange(36).reshape(6, 6) < 9)
    with pytest.raises(ValueError, match="has 9 valid cells; area-to-point kriging needs at least 10"):
        ATPK().fit(sparse)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"neighbours": 4}, "neighbours must be a positive odd whole number"),
        ({"kind": "universal"}, "kind must be 'ordinary' or 'simple'"),
        ({"psf": "airy"}, "psf must be 'box', 'gaussian' or 'point'"),
        ({"variogram": "linear"}, "variogram must be one of"),
    ],
)
def test_bad_parameters(rng, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ATPK(**kwargs).fit(coarse_field(rng, (6, 6)))


def test_predict_needs_fit_and_nested_grid(rng):
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ATPK().predict(4)
    coarse = coarse_field(rng, (6, 6))
    model = ATPK(variogram=MODEL).fit(coarse)
    with pytest.raises(ValueError, match="do not nest"):
        model.predict(ds.grid.make_grid((25, 24), 6000.0, crs="EPSG:32632"))
    with pytest.raises(TypeError, match="must be an xarray DataArray"):
        ATPK().fit(coarse.values)


def test_gaussian_psf_reproduces_psf_weighted_values(rng):
    """With a Gaussian PSF the coarse value is the PSF-weighted mean of the prediction (interior cells)."""
    from downscale.kriging.variogram import psf_kernel

    coarse = coarse_field(rng, (12, 12))
    model = ATPK(variogram=MODEL, psf="gaussian", neighbours=7).fit(coarse)
    assert not model.coherent
    f = 4
    fine = model.predict(f).values
    kernel, first = psf_kernel("gaussian", f, 1.0)
    i, j = 6, 5  # interior cell: its PSF support lies inside the grid
    rows = i * f + first + np.arange(kernel.size)
    cols = j * f + first + np.arange(kernel.size)
    weighted = np.einsum("a,b,ab->", kernel, kernel, fine[np.ix_(rows, cols)])
    # Exact only when every neighbour the PSF touches is in the window, hence a loose tolerance
    # (the box-PSF prediction misses it by 0.11 here, the Gaussian-PSF one by 0.01).
    assert_allclose(weighted, coarse.values[i, j], rtol=0, atol=0.03)
