"""Variograms: model functions against PyKrige/GSTools, FFT empirical variogram against brute force,
fitting, fallbacks, regularisation against brute-force discretisation, deconvolution."""

import gstools
import numpy as np
import pytest
from numpy.testing import assert_allclose
from pykrige import variogram_models

from downscale.kriging import (
    VariogramFitWarning,
    VariogramModel,
    deconvolve_variogram,
    empirical_variogram,
    fit_variogram,
    regularize_variogram,
)


@pytest.mark.parametrize("model", ["exponential", "spherical", "gaussian"])
def test_models_match_pykrige(model):
    h = np.linspace(0.0, 9000.0, 50)
    vm = VariogramModel(model, sill=1.7, range=4000.0, nugget=0.3)
    reference = getattr(variogram_models, f"{model}_variogram_model")([1.7, 4000.0, 0.3], h)
    # PyKrige returns the nugget at h = 0; a variogram is 0 there.
    assert_allclose(vm(h)[1:], reference[1:], rtol=1e-12)
    assert vm(0.0) == 0.0


def test_matern_matches_gstools():
    h = np.linspace(0.0, 9000.0, 50)
    vm = VariogramModel("matern", sill=2.0, range=3000.0, nu=1.5)
    reference = gstools.Matern(dim=2, var=2.0, len_scale=3000.0, nu=1.5).variogram(h)
    assert_allclose(vm(h), reference, rtol=1e-10, atol=1e-14)


def test_model_validation():
    with pytest.raises(ValueError, match="Unknown variogram model 'linear'"):
        VariogramModel("linear", 1.0, 1.0)
    with pytest.raises(ValueError, match="range > 0"):
        VariogramModel("exponential", 1.0, 0.0)


def _brute_force_variogram(stack, dy, dx, vectors):
    gamma, count = [], []
    nt, ny, nx = stack.shape
    for ky, kx in vectors:
        total, n = 0.0, 0
        for t in range(nt):
            for i in range(ny):
                for j in range(nx):
                    i2, j2 = i + ky, j + kx
                    if 0 <= i2 < ny and 0 <= j2 < nx:
                        a, b = stack[t, i, j], stack[t, i2, j2]
                        if np.isfinite(a) and np.isfinite(b):
                            total += (a - b) ** 2
                            n += 1
        gamma.append(total / (2 * n))
        count.append(n)
    return np.array(gamma), np.array(count)


def test_empirical_variogram_matches_brute_force(rng):
    stack = rng.normal(size=(2, 7, 9)) + 5.0
    stack[0, 2, 3] = np.nan
    stack[1, 4:6, 1] = np.nan
    ev = empirical_variogram(stack, cell_size=(2000.0, 1000.0), max_lag=4000.0, min_pairs=1)
    gamma, count = _brute_force_variogram(stack, 2000.0, 1000.0, ev.vectors)
    assert_allclose(ev.vector_gamma, gamma, rtol=1e-9)
    assert_allclose(ev.vector_counts, count)
    # Bins are pair-weighted averages of the lag vectors in them.
    first = ev.vector_bin == 0
    assert_allclose(ev.gamma[0], np.average(gamma[first], weights=count[first]), rtol=1e-9)
    assert ev.lags.max() <= 4000.0


def test_empirical_variogram_needs_cell_size_and_enough_cells():
    with pytest.raises(ValueError, match="cell_size"):
        empirical_variogram(np.zeros((5, 5)))
    field = np.full((5, 5), np.nan)
    field[0, :4] = 1.0
    with pytest.raises(ValueError, match="Too few valid cells to estimate a variogram: 4"):
        empirical_variogram(field, cell_size=1.0)


@pytest.mark.parametrize("model", ["exponential", "spherical", "gaussian", "matern"])
def test_fit_recovers_known_model(model):
    truth = VariogramModel(model, sill=2.5, range=6000.0, nugget=0.4)
    lags = np.arange(1.0, 16.0) * 1000.0
    ev = _exact_empirical(truth, lags)
    fitted = fit_variogram(ev, model, nugget="fit")
    assert_allclose([fitted.sill, fitted.range, fitted.nugget], [2.5, 6000.0, 0.4], rtol=1e-4)
    fixed = fit_variogram(ev, model, nugget=0.4)
    assert_allclose([fixed.sill, fixed.range, fixed.nugget], [2.5, 6000.0, 0.4], rtol=1e-4)
    # One fit from a nearby model (as the deconvolution's refits start) finds the same answer.
    near = VariogramModel(model, sill=2.0, range=8000.0, nugget=0.2)
    started = fit_variogram(ev, model, nugget="fit", initial=near)
    assert_allclose([started.sill, started.range, started.nugget], [2.5, 6000.0, 0.4], rtol=1e-4)


def _exact_empirical(model, lags):
    from downscale.kriging import EmpiricalVariogram

    return EmpiricalVariogram(
        lags, model(lags), np.ones(lags.size), (1000.0, 1000.0), model.total_sill, 100, None, None, None, None
    )


def test_fit_that_does_not_converge_falls_back_with_warning():
    truth = VariogramModel("exponential", sill=2.0, range=6000.0)
    ev = _exact_empirical(truth, np.arange(1.0, 11.0) * 1000.0)
    with pytest.warns(VariogramFitWarning, match="did not converge within 1 evaluations"):
        fitted = fit_variogram(ev, "exponential", max_iter=1)
    # The documented default: sill = variance, range = half the largest lag, no nugget.
    assert fitted == VariogramModel("exponential", sill=2.0, range=5000.0)


def test_zero_variance_field_falls_back_with_warning():
    ev = empirical_variogram(np.ones((6, 6)), cell_size=1000.0)
    with pytest.warns(VariogramFitWarning, match="zero variance"):
        fitted = fit_variogram(ev)
    assert fitted.sill == 0.0


def test_bad_nugget_argument():
    ev = _exact_empirical(VariogramModel("exponential", 1.0, 5000.0), np.arange(1.0, 6.0) * 1000.0)
    with pytest.raises(ValueError, match="nugget must be a number or 'fit'"):
        fit_variogram(ev, nugget="estimate")


@pytest.mark.parametrize("psf", ["box", "gaussian"])
def test_regularization_matches_brute_force_discretisation(psf):
    """Regularised semivariance == mean over all pairs of sub-cells, PSF-weighted, by explicit loops."""
    from downscale.kriging.variogram import psf_kernel

    point = VariogramModel("exponential", sill=1.5, range=5000.0)
    cell = (2000.0, 1000.0)
    s = 4
    kernel, first = psf_kernel(psf, s, 1.0)
    positions = (np.arange(kernel.size) + first + 0.5) / s  # sub-cell centres in cell units

    def block_cov(ky, kx):
        ys = (positions[:, None] - positions[None, :] + ky) * cell[0]
        xs = (positions[:, None] - positions[None, :] + kx) * cell[1]
        cov = point.covariance(np.hypot(ys[:, :, None, None], xs[None, None, :, :]))
        weights = np.einsum("a,b,c,d->abcd", kernel, kernel, kernel, kernel)
        return float((weights * cov).sum())

    lags = [[0, 1], [1, 0], [2, 3], [1, -2]]
    expected = [block_cov(0, 0) - block_cov(*lag) for lag in lags]
    assert_allclose(regularize_variogram(point, lags, cell, psf=psf, subdivisions=s), expected, rtol=1e-10)


@pytest.fixture(scope="module")
def block_averaged_field():
    """A point-support exponential random field averaged over 8 x 8 blocks (32 x 32 coarse cells)."""
    factor, n_coarse = 8, 32
    fine_model = gstools.Exponential(dim=2, var=1.0, len_scale=4.0 * factor)
    fine = gstools.SRF(fine_model, seed=3).structured([np.arange(n_coarse * factor)] * 2)
    return fine.reshape(n_coarse, factor, n_coarse, factor).mean(axis=(1, 3))


@pytest.mark.parametrize("model", ["gaussian", "spherical"])
def test_deconvolution_reproduces_fitted_areal_variogram(model, block_averaged_field):
    ev = empirical_variogram(block_averaged_field, cell_size=25_000.0)
    areal = fit_variogram(ev, model)
    point, errors = deconvolve_variogram(areal, ev, return_error=True)
    regularised = regularize_variogram(point, ev.vectors, ev.cell_size, subdivisions=16)
    binned = np.bincount(ev.vector_bin, regularised * ev.vector_counts) / np.bincount(
        ev.vector_bin, ev.vector_counts
    )
    relative = (binned - areal(ev.lags)) / areal(ev.lags)
    assert_allclose(relative, errors, atol=1e-12)
    if model == "gaussian":
        assert np.max(np.abs(relative)) < 0.05  # every lag
    else:
        # A spherical areal model is linear at the origin, a regularised one is not: the first lags
        # cannot be matched by any spherical point model (see the deconvolve_variogram docstring).
        assert np.max(np.abs(relative[3:])) < 0.05
    assert point.sill > areal.sill  # point support has the larger variance


def test_deconvolution_recovers_known_point_model(block_averaged_field):
    """Known truth: the areal 'empirical' variogram is the exact regularisation of a point exponential.

    An exponential (linear at the origin) regularises to a curve that is parabolic at the origin,
    so it is matched against the empirical areal variogram (Goovaerts 2008), which it reproduces
    within 5 % at every lag, and the point model is recovered.
    """
    truth = VariogramModel("exponential", sill=1.0, range=300_000.0)
    ev = empirical_variogram(block_averaged_field, cell_size=25_000.0)
    exact = regularize_variogram(truth, ev.vectors, ev.cell_size, subdivisions=16)
    counts = np.bincount(ev.vector_bin, ev.vector_counts)
    ev.gamma = np.bincount(ev.vector_bin, exact * ev.vector_counts) / counts
    areal = fit_variogram(ev, "exponential")
    point, errors = deconvolve_variogram(areal, ev, target="empirical", return_error=True)
    assert np.max(np.abs(errors)) < 0.05
    assert_allclose([point.sill, point.range], [1.0, 300_000.0], rtol=0.05)
    with pytest.raises(ValueError, match="target must be 'model' or 'empirical'"):
        deconvolve_variogram(areal, ev, target="data")


def test_white_noise_gets_no_structure_shorter_than_a_cell():
    """A coarse field without spatial structure (e.g. the residual of a good trend).

    With the nugget fixed at 0, as area-to-point kriging keeps it, the fit used to reach for a
    range of a tenth of a cell, and the deconvolution turned that into a point sill 100-120 times
    the field's variance (a point process of 2.5 km range behind 25 km cells: not identifiable
    from them). The range now stays at least one cell, and the point sill a few times the areal one.
    """
    for seed in range(3):
        field = np.random.default_rng(seed).normal(size=(16, 16))
        ev = empirical_variogram(field, cell_size=25_000.0)
        areal = fit_variogram(ev, "exponential")
        point = deconvolve_variogram(areal, ev, target="empirical")
        assert areal.range >= 25_000.0 and point.range >= 25_000.0
        assert point.sill < 5 * field.var(), (seed, point)


def test_default_lags_stop_at_max_lag_cells():
    """Half the extent on small grids; MAX_LAG_CELLS on large ones, so the deconvolution's memory is bounded."""
    from downscale.kriging.variogram import MAX_LAG_CELLS

    rng = np.random.default_rng(0)
    small = empirical_variogram(rng.normal(size=(40, 40)), cell_size=1000.0)
    assert small.lags.max() <= 20 * 1000.0 + 1e-6 and small.lags.max() > 15 * 1000.0
    large = empirical_variogram(rng.normal(size=(240, 240)), cell_size=1000.0)
    assert (
        large.lags.max() <= MAX_LAG_CELLS * 1000.0 + 1e-6 and large.lags.max() > (MAX_LAG_CELLS - 2) * 1000.0
    )
