"""Tests for the Wald protocol: exact recovery of a covariate-driven field, the bilinear baseline, factors, bad input."""

import numpy as np
import pytest
import xarray as xr
from sklearn.linear_model import LinearRegression

import downscale as ds
from downscale.validation import wald_score
from downscale.validation.wald import default_factor


def _pair(rng, coarse_shape=(16, 16), fine_factor=3, field="linear"):
    """A coarse field that is exactly 2 + 3 * (block mean of covariate a) at every scale, and its covariates."""
    coarse_grid = ds.grid.make_grid(coarse_shape, 3000.0, crs="EPSG:32632")
    fine = ds.grid.fine_grid(coarse_grid, fine_factor)
    shape = (fine.sizes["y"], fine.sizes["x"])
    # A smooth covariate with detail at every scale, and an unrelated one.
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    a = np.sin(xx / 3.0) + np.cos(yy / 5.0) + 0.3 * rng.standard_normal(shape)
    X = xr.Dataset({"a": (("y", "x"), a), "b": (("y", "x"), rng.standard_normal(shape))}, coords=fine.coords)
    X = ds.grid.set_crs(X, "EPSG:32632")
    target = 2.0 + 3.0 * X["a"]
    coarse = ds.grid.block_mean(target, fine_factor)
    coarse.name = "field"
    coarse.attrs = {"units": "K", "long_name": "field"}
    return coarse, X


def test_linear_field_is_recovered_exactly_and_beats_bilinear(rng):
    coarse, X = _pair(rng)
    # A plain linear regression: the package's linear trend clips to the training range, by design.
    model = ds.Downscaler(trend=LinearRegression(), calibrate_std=False)
    result = wald_score(model, coarse, X, factor=4)
    # The degraded field is the block mean of the coarse one.
    expected = coarse.values.reshape(4, 4, 4, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(result.degraded.values, expected, rtol=1e-12)
    # Linear in the aggregated covariate at both scales: the trend is exact, the residual is ~0.
    assert result.scores.loc["downscaled", "rmse"] < 1e-6 * result.scores.loc["bilinear", "rmse"]
    assert result.gain > 0.999
    # The baseline is bilinear interpolation of the degraded field.
    np.testing.assert_allclose(
        result.baseline.values, ds.grid.upsample(result.degraded, 4, "bilinear").values, rtol=1e-12
    )
    assert result.scores.loc["bilinear", "n"] == coarse.size
    assert result.prediction.shape == coarse.shape and result.factor == 4
    assert list(result.scores.index) == ["downscaled", "bilinear"]
    assert {"rmse", "mae", "bias", "r", "kge", "nse", "ubrmse"} <= set(result.scores.columns)


def test_model_is_not_fitted_in_place(rng):
    coarse, X = _pair(rng)
    model = ds.Downscaler(trend="linear", calibrate_std=False)
    wald_score(model, coarse, X, factor=2)
    assert not hasattr(model, "trend_models_")


def test_default_factor_follows_the_downscaling_factor_within_the_grid():
    grid = ds.grid.make_grid((20, 30), 25_000.0)
    assert default_factor(grid, fine_factor=3) == 3
    assert default_factor(grid, fine_factor=25) == 5  # 20 // 4: leaves 4 x 6 cells
    assert default_factor(grid) == 5
    with pytest.raises(ValueError, match="needs at least 8 x 8"):
        default_factor(ds.grid.make_grid((7, 30), 25_000.0))


def test_default_factor_is_used(rng):
    coarse, X = _pair(rng, fine_factor=2)
    assert wald_score(ds.Downscaler(trend="linear", calibrate_std=False), coarse, X).factor == 2


def test_grid_not_a_multiple_of_the_factor_is_cropped_with_a_warning(rng):
    coarse, X = _pair(rng, coarse_shape=(17, 18))
    with pytest.warns(
        UserWarning, match="not a multiple of factor 4; the Wald protocol uses its first 16 x 16"
    ):
        result = wald_score(ds.Downscaler(trend="linear", calibrate_std=False), coarse, X, factor=4)
    assert result.prediction.shape == (16, 16)
    np.testing.assert_array_equal(result.prediction["x"].values, coarse["x"].values[:16])


def test_bad_input(rng):
    coarse, X = _pair(rng)
    model = ds.Downscaler(trend="linear", calibrate_std=False)
    with pytest.raises(ValueError, match="leaves 3 x 3 cells; .* at least 4 x 4. Use factor <= 4"):
        wald_score(model, coarse, X, factor=5)
    with pytest.raises(ValueError, match="factor must be an integer >= 2, got 1"):
        wald_score(model, coarse, X, factor=1)
    with pytest.raises(TypeError, match="coarse must be an xarray DataArray"):
        wald_score(model, coarse.values, X)
    small, small_X = _pair(rng, coarse_shape=(6, 6))
    with pytest.raises(ValueError, match="Use a larger area"):
        wald_score(model, small, small_X)


def test_scene_covariates_beat_bilinear_and_kriging_alone_does_too():
    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(160, 160), factor=4)
    X = ds.covariates.build(dem=scene.dem, features=["elevation"], location=False)
    linear = wald_score(ds.Downscaler(trend="linear", calibrate_std=False), scene.coarse, X, factor=4)
    kriging = wald_score(ds.Downscaler(trend="none", calibrate_std=False), scene.coarse, X, factor=4)
    # Measured: rmse linear 0.49 K < kriging alone 0.76 K < bilinear 0.94 K (the lapse rate explains sub-cell LST).
    assert linear.scores.loc["downscaled", "rmse"] < kriging.scores.loc["downscaled", "rmse"]
    assert kriging.gain > 0 and linear.gain > 0.4
    n_valid = int(np.isfinite(scene.coarse.values).sum())
    assert linear.scores.loc["downscaled", "n"] <= n_valid
