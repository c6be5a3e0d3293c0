"""Tests for SHAP explanations of the trend: additivity, the linear closed form, LightGBM's own TreeSHAP, maps, errors."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.ensemble import RandomForestRegressor
from sklearn.neighbors import KNeighborsRegressor

import downscale as ds
from downscale.explain import global_importance, shap_maps, shap_values

FACTOR = 3


@pytest.fixture(scope="module")
def pair():
    """Coarse field = 5 + 2 * block mean of covariate a (b is unrelated noise), 16 x 16 coarse cells."""
    rng = np.random.default_rng(0)
    coarse_grid = ds.grid.make_grid((16, 16), 3000.0, crs="EPSG:32632")
    fine = ds.grid.fine_grid(coarse_grid, FACTOR)
    shape = (fine.sizes["y"], fine.sizes["x"])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    a = np.sin(xx / 4.0) + np.cos(yy / 6.0) + 0.2 * rng.standard_normal(shape)
    X = xr.Dataset({"a": (("y", "x"), a), "b": (("y", "x"), rng.standard_normal(shape))}, coords=fine.coords)
    X = ds.grid.set_crs(X, "EPSG:32632")
    coarse = ds.grid.block_mean(5.0 + 2.0 * X["a"], FACTOR)
    coarse.name = "field"
    return coarse, X


def _fit(pair, trend):
    """min_retention=0 keeps b (pixel noise, which the default leaves out) so SHAP sees two covariates."""
    coarse, X = pair
    return ds.Downscaler(trend=trend, calibrate_std=False, min_retention=0).fit(coarse, X)


@pytest.mark.parametrize(
    "trend",
    ["linear", "lightgbm", RandomForestRegressor(n_estimators=20, min_samples_leaf=2, random_state=0)],
)
def test_shap_values_add_up_to_the_trend(pair, trend):
    model = _fit(pair, trend)
    explained = shap_values(model, pair[1], sample=300, seed=1)
    assert explained.values.shape == (300, 2) and list(explained.values.columns) == ["a", "b"]
    assert explained.values.index.names == ["y", "x"]
    trend_at_pixels = model.trend_models_[0].predict(explained.data.to_numpy())
    np.testing.assert_allclose(explained.prediction.to_numpy(), trend_at_pixels, atol=1e-8)
    importance = global_importance(explained)
    assert importance.index[0] == "a" and importance.loc["a", "share"] > 0.8
    np.testing.assert_allclose(importance["share"].sum(), 1.0)


def test_linear_closed_form(pair):
    coarse, X = pair
    model = _fit(pair, "linear")
    explained = shap_values(model, X, sample=None)
    # The training rows are the coarse cells: their mean of a is the reference point.
    training_a = ds.covariates.aggregate(X, coarse)["a"]
    mean_a = float(training_a.mean())
    # The linear trend clips fine covariates to the training range before the regression.
    clipped = explained.data["a"].clip(float(training_a.min()), float(training_a.max()))
    expected = 2.0 * (clipped - mean_a)
    np.testing.assert_allclose(explained.values["a"], expected, atol=0.02 * expected.abs().max())
    assert explained.values["b"].abs().max() < 0.02 * explained.values["a"].abs().max()
    np.testing.assert_allclose(explained.base_value, 5.0 + 2.0 * mean_a, rtol=1e-3)
    assert len(explained.values) == X["a"].size  # sample=None: every pixel


def test_lightgbm_matches_its_own_tree_shap(pair):
    model = _fit(pair, "lightgbm")
    explained = shap_values(model, pair[1], sample=200)
    contributions = model.trend_models_[0].booster_.predict(explained.data.to_numpy(), pred_contrib=True)
    np.testing.assert_allclose(explained.values.to_numpy(), contributions[:, :-1], atol=1e-9)
    np.testing.assert_allclose(explained.base_value, contributions[0, -1], atol=1e-9)


def test_sample_is_reproducible_and_drops_missing_pixels(pair):
    coarse, X = pair
    model = _fit(pair, "linear")
    gappy = X.copy()
    gappy["b"] = gappy["b"].where(gappy["x"] > gappy["x"][5])
    first = shap_values(model, gappy, sample=100, seed=3)
    again = shap_values(model, gappy, sample=100, seed=3)
    pd.testing.assert_frame_equal(first.values, again.values)
    assert np.isfinite(first.values.to_numpy()).all()
    assert (first.data.index.get_level_values("x") > float(X["x"][5])).all()


def test_maps_match_values_on_the_strided_grid(pair):
    coarse, X = pair
    model = _fit(pair, "lightgbm")
    maps = shap_maps(model, X, stride=4)
    assert maps["a"].shape == (12, 12) and maps.attrs["stride"] == 4
    np.testing.assert_array_equal(maps["x"].values, X["x"].values[::4])
    table = pd.DataFrame({"a": X["a"].values[::4, ::4].ravel(), "b": X["b"].values[::4, ::4].ravel()})
    np.testing.assert_allclose(maps["trend"].values.ravel(), model.trend_models_[0].predict(table.to_numpy()))
    contributions = model.trend_models_[0].booster_.predict(table.to_numpy(), pred_contrib=True)
    np.testing.assert_allclose(maps["a"].values.ravel(), contributions[:, 0], atol=1e-9)
    assert ds.grid.get_crs(maps) is not None
    # Default stride: at most max_pixels pixels.
    assert shap_maps(model, X, max_pixels=100)["a"].size <= 100


def test_regressor_fitted_on_a_dataframe(pair):
    coarse, X = pair
    table = ds.covariates.aggregate(X, coarse).to_dataframe()[["a", "b"]]
    regressor = RandomForestRegressor(n_estimators=10, random_state=0).fit(table, coarse.values.ravel())
    explained = shap_values(regressor, X, sample=50)
    np.testing.assert_allclose(explained.prediction, regressor.predict(explained.data), atol=1e-8)


def test_errors(pair):
    coarse, X = pair
    with pytest.raises(ValueError, match="trend='none'.*nothing to explain"):
        shap_values(_fit(pair, "none"), X)
    with pytest.raises(ValueError, match="tree trends .* got KNeighborsRegressor"):
        shap_values(_fit(pair, KNeighborsRegressor()), X)
    with pytest.raises(ValueError, match="not fitted"):
        shap_values(ds.Downscaler(), X)
    with pytest.raises(ValueError, match=r"missing covariate\(s\) \['b'\]"):
        shap_values(_fit(pair, "linear"), X[["a"]])
    with pytest.raises(ValueError, match="feature_names_in_"):
        shap_values(RandomForestRegressor().fit(np.ones((4, 2)), np.ones(4)), X)


def test_applicability_flags_covariates_outside_the_training_range_weighted_by_shap():
    rng = np.random.default_rng(1)
    coarse_grid = ds.grid.make_grid((16, 16), 3000.0, crs="EPSG:32632")
    fine = ds.grid.fine_grid(coarse_grid, FACTOR)
    shape = (fine.sizes["y"], fine.sizes["x"])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    a = np.sin(xx / 4.0) + np.cos(yy / 6.0) + 0.2 * rng.standard_normal(shape)
    b = rng.standard_normal(shape)
    X = ds.grid.set_crs(
        xr.Dataset({"a": (("y", "x"), a), "b": (("y", "x"), b)}, coords=fine.coords), "EPSG:32632"
    )
    coarse = ds.grid.block_mean(5.0 + 2.0 * X["a"], FACTOR)
    # Two corners without coarse data (no training cells) whose covariates leave the training range:
    # `a` (which drives the trend) in the north-west, `b` (which the trend ignores) in the south-east.
    coarse[:4, :4] = np.nan
    coarse[12:, 12:] = np.nan
    X["a"][:12, :12] += 6.0
    X["b"][36:, 36:] += 6.0
    model = ds.Downscaler(trend="linear", calibrate_std=False).fit(coarse, X)
    di, inside, threshold = ds.explain.applicability(model, X)
    assert inside.dtype == bool and inside.shape == shape and threshold > 0
    assert not inside.values[:12, :12].any()  # the trend extrapolates in `a`
    assert inside.values[36:, 36:].mean() > 0.9  # `b` has no weight: its novelty does not matter
    assert inside.values[12:36, 12:36].mean() > 0.9  # the trained region
    _, unweighted, _ = ds.explain.applicability(model, X, weights=None)
    assert unweighted.values[36:, 36:].mean() < 0.1  # with equal weights `b` counts
    with pytest.raises(ValueError, match="needs a fitted downscale.Downscaler"):
        ds.explain.applicability(ds.Downscaler(), X)


def test_applicability_counts_the_stations_that_joined_the_trend_as_training_rows():
    """A station pixel is a training row of a trend the stations joined: its dissimilarity index is 0."""
    scene = ds.datasets.synthetic_scene("soil_moisture", seed=1, shape=(120, 120), factor=10)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    model = ds.Downscaler(trend="linear", calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask, stations=scene.stations
    )
    assert model.station_trend_
    di, inside, _ = ds.explain.applicability(model, X, weights=None)
    at_stations = ds.validation.extract_at_points(di, scene.stations)
    np.testing.assert_allclose(at_stations, 0.0, atol=1e-12)
    assert ds.validation.extract_at_points(inside, scene.stations).all()
    # Without the station rows the same pixels are far from every training row.
    model.station_trend_ = False
    di_coarse, _, _ = ds.explain.applicability(model, X, weights=None)
    assert np.all(ds.validation.extract_at_points(di_coarse, scene.stations) > 0)
