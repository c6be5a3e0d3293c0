"""Tests for the Downscaler: coherence, bounds, known-truth recovery, time, masks, sklearn API, bad input."""

import numpy as np
import pytest
import xarray as xr
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import ParameterGrid

import downscale as ds
from downscale.downscaler import Downscaler

FACTOR = 10


@pytest.fixture(scope="module")
def scenes():
    out = {}
    for variable in ("lst", "precipitation", "soil_moisture"):
        scene = ds.datasets.synthetic_scene(variable, seed=1, shape=(120, 120), factor=FACTOR)
        X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
        out[variable] = (scene, X)
    return out


def _coherence_error(fine, coarse, factor=FACTOR):
    back = ds.grid.block_mean(fine, factor).values
    c = coarse.values
    ok = np.isfinite(c) & np.isfinite(back)
    return np.max(np.abs(back[ok] - c[ok]) / np.maximum(np.abs(c[ok]), 1e-12))


def _field(values, grid, name="target", attrs=None):
    da = xr.DataArray(
        values, dims=("y", "x"), coords={"y": grid.y, "x": grid.x}, name=name, attrs=attrs or {}
    )
    return ds.grid.set_crs(da, "EPSG:32632")


def test_recovers_a_field_that_is_a_linear_function_of_the_covariates(rng):
    grid = ds.grid.make_grid((60, 60), 1000.0, crs="EPSG:32632")
    a = rng.standard_normal((60, 60))
    b = np.add.outer(np.linspace(0, 1, 60), np.linspace(0, 2, 60))
    truth = _field(3.0 * a - 2.0 * b + 5.0, grid)
    X = xr.Dataset({"a": _field(a, grid), "b": _field(b, grid)})
    coarse = ds.grid.block_mean(truth, 6)
    model = Downscaler(trend=LinearRegression(), calibrate_std=False).fit(coarse, X)
    fine = model.predict(X)
    np.testing.assert_allclose(fine.values, truth.values, atol=1e-8)
    np.testing.assert_allclose(model.residual_coarse_.values, 0.0, atol=1e-9)
    assert model.factor_ == 6 and model.feature_names_ == ["a", "b"]


def test_constant_trend_is_coherent_kriging_of_the_field(rng):
    grid = ds.grid.make_grid((60, 60), 1000.0, crs="EPSG:32632")
    yy, xx = np.mgrid[0:60, 0:60] / 60
    truth = _field(np.sin(3 * xx) + np.cos(2 * yy), grid)
    X = xr.Dataset({"noise": _field(rng.standard_normal((60, 60)), grid)})
    coarse = ds.grid.block_mean(truth, 6)
    fine = Downscaler(trend="none", calibrate_std=False).fit(coarse, X).predict(X)
    assert _coherence_error(fine, coarse, 6) < 1e-12
    bilinear = ds.grid.upsample(coarse, 6, "bilinear")
    rmse = np.sqrt(np.mean((fine - truth).values ** 2))
    assert rmse < np.sqrt(np.mean((bilinear - truth).values ** 2))


@pytest.mark.parametrize("variable", ["lst", "precipitation", "soil_moisture"])
def test_coherent_and_within_bounds(scenes, variable):
    scene, X = scenes[variable]
    mask = scene.mask if variable != "precipitation" else None
    model = Downscaler(calibrate_std=False).fit(scene.coarse, X, mask=mask)
    fine, std = model.predict(X, return_std=True)
    assert _coherence_error(fine, scene.coarse) < 1e-9
    low, high = scene.bounds
    values = fine.values[np.isfinite(fine.values)]
    if low is not None:
        assert values.min() >= low
    if high is not None:
        assert values.max() <= high
    # CF metadata and names
    assert fine.name == variable and std.name == f"{variable}_std"
    assert fine.attrs["units"] == scene.coarse.attrs["units"]
    assert fine.attrs["standard_name"] == scene.coarse.attrs["standard_name"]
    assert "downscale_method" in fine.attrs
    assert ds.grid.get_crs(fine).to_epsg() == 32632
    # std is finite and positive wherever the prediction is
    finite = np.isfinite(fine.values)
    assert np.all(np.isfinite(std.values[finite])) and np.all(std.values[finite] >= 0)
    if mask is not None:
        assert np.all(np.isnan(fine.values[~mask.values]))
        assert np.all(finite[mask.values])


def test_dry_coarse_cells_stay_dry(scenes):
    scene, X = scenes["precipitation"]
    dry = scene.coarse.values == 0
    assert dry.any()
    fine = Downscaler(calibrate_std=False).fit(scene.coarse, X).predict(X)
    blocks = fine.values.reshape(12, FACTOR, 12, FACTOR)
    assert np.all(blocks.transpose(0, 2, 1, 3)[dry] == 0.0)


def test_bounds_and_transform_from_attributes_or_parameters(scenes):
    scene, X = scenes["soil_moisture"]
    model = Downscaler(calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    assert model.bounds_ == (0.0, 0.45) and model.transform_.name == "logit"
    model = Downscaler(bounds=(None, None), transform="none", calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    assert model.bounds_ == (None, None) and model.transform_.name == "none"


def test_nan_coarse_cells_are_filled_unless_masked(scenes):
    scene, X = scenes["lst"]
    coarse = scene.coarse.copy()
    coarse[5:7, 5:7] = np.nan  # a cloud
    model = Downscaler(trend="linear", calibrate_std=False).fit(coarse, X, mask=scene.mask)
    fine, std = model.predict(X, return_std=True)
    hole = fine.values[50:70, 50:70]
    assert np.all(np.isfinite(hole))
    truth = scene.truth.values[50:70, 50:70]
    assert np.sqrt(np.mean((hole - truth) ** 2)) < 3 * float(np.nanstd(scene.truth))
    assert _coherence_error(fine, coarse) < 1e-9
    # kriging variance is larger in the hole than next to data
    assert np.nanmean(std.values[50:70, 50:70]) > np.nanmean(std.values[20:40, 20:40])
    masked = model.predict(X, mask="coarse")
    assert np.all(np.isnan(masked.values[50:70, 50:70]))


@pytest.mark.parametrize("temporal", ["per_step", "pooled"])
def test_time_axis(temporal):
    scene = ds.datasets.synthetic_scene("precipitation", seed=2, n_times=2, shape=(100, 100), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"], location=True)
    model = Downscaler(trend="linear", temporal=temporal, calibrate_std=False).fit(scene.coarse, X)
    fine = model.predict(X)
    assert fine.dims == ("time", "y", "x")
    np.testing.assert_array_equal(fine["time"].values, scene.coarse["time"].values)
    assert _coherence_error(fine, scene.coarse) < 1e-9
    assert len(model.trend_models_) == (2 if temporal == "per_step" else 1)
    assert fine.values.min() >= 0


def test_time_varying_covariate_must_match_times():
    scene = ds.datasets.synthetic_scene("lst", seed=2, n_times=2, shape=(100, 100), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation"])
    X["anomaly"] = scene.truth - scene.truth.mean(("y", "x"))
    model = Downscaler(trend="linear", temporal="pooled", calibrate_std=False).fit(
        scene.coarse, X.fillna(0.0)
    )
    assert model.predict(X.fillna(0.0)).sizes["time"] == 2
    with pytest.raises(ValueError, match="has 1 time steps but the coarse field has 2"):
        Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X.fillna(0.0).isel(time=[0]))


def test_residual_none_is_the_trend_alone(scenes):
    scene, X = scenes["lst"]
    trend_only = Downscaler(trend="linear", residual="none", calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    full = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    assert trend_only.atpk_ == []
    assert _coherence_error(trend_only.predict(X), scene.coarse) > 1e-4
    truth = scene.truth
    rmse = {
        k: float(np.sqrt(((m.predict(X) - truth) ** 2).mean()))
        for k, m in [("none", trend_only), ("atpk", full)]
    }
    assert rmse["atpk"] < rmse["none"]


def test_sklearn_api_clone_params_and_a_spatial_parameter_search(scenes):
    scene, X = scenes["lst"]
    model = Downscaler(trend="rf", neighbours=3)
    assert model.get_params()["trend"] == "rf"
    copy = clone(model)
    assert copy.get_params() == model.get_params() and copy is not model
    assert clone(model.set_params(trend="linear")).trend == "linear"
    with pytest.raises(ValueError, match="residual must be"):
        Downscaler(residual="idw").fit(scene.coarse, X)
    # Search over a spatial split: fit with the east half hidden, score on it.
    train = scene.coarse.where(scene.coarse.x < scene.coarse.x.values[6])
    test = scene.coarse.where(scene.coarse.x >= scene.coarse.x.values[6])
    scores = {}
    for params in ParameterGrid({"trend": ["none", "linear"], "calibrate_std": [False]}):
        candidate = clone(Downscaler()).set_params(**params).fit(train, X, mask=scene.mask)
        scores[params["trend"]] = candidate.score(test, X)
    # LST follows elevation: the covariates must beat kriging the field itself on unseen cells.
    assert scores["linear"] > scores["none"]
    assert scores["linear"] > 0.5
    assert Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask).score(
        scene.coarse, X
    ) == pytest.approx(1.0, abs=1e-12)


def test_bad_input(scenes):
    scene, X = scenes["lst"]
    model = Downscaler(trend="linear", calibrate_std=False)
    gappy = X.copy()
    gappy["ndvi"] = X["ndvi"].where(X["ndvi"].x > X["ndvi"].x.values[30])
    with pytest.raises(ValueError, match="Covariates have NaN where the coarse target is valid: ndvi"):
        model.fit(scene.coarse, gappy)
    fitted = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    with pytest.raises(ValueError, match=r"X is missing covariate\(s\) \['slope'\] seen in fit"):
        fitted.predict(X.drop_vars("slope"))
    shifted = scene.coarse.assign_coords(x=scene.coarse.x + 3000.0)
    with pytest.raises(ValueError, match="grid does not match the fine covariates X.*downscale.align"):
        model.fit(shifted, X)
    with pytest.raises(ValueError, match="grid does not match"):
        model.fit(scene.coarse.isel(y=slice(0, 10)), X)
    single = scene.coarse.where((scene.coarse.x == scene.coarse.x[3]) & (scene.coarse.y == scene.coarse.y[3]))
    with pytest.raises(ValueError, match="has 1 valid cell.*needs at least 10"):
        model.fit(single, X)
    with pytest.raises(ValueError, match="has 1 valid cell.*needs at least 3"):
        Downscaler(residual="none").fit(single, X)
    with pytest.raises(TypeError, match="coarse must be an xarray DataArray"):
        model.fit(scene.coarse.values, X)
    with pytest.raises(TypeError, match="X must be an xarray Dataset"):
        model.fit(scene.coarse, X["elevation"].values)
    with pytest.raises(ValueError, match="trend must be one of"):
        Downscaler(trend="gbm").fit(scene.coarse, X)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        Downscaler().predict(X)


def test_out_of_range_coarse_values_are_clipped_with_a_warning(scenes):
    scene, X = scenes["precipitation"]
    coarse = scene.coarse.copy()
    coarse[0, 0] = -1.0
    with pytest.warns(UserWarning, match="outside the bounds"):
        model = Downscaler(trend="linear", calibrate_std=False).fit(coarse, X)
    assert model.predict(X).values[:FACTOR, :FACTOR].max() == 0.0


def test_models_import_without_torch():
    import downscale.models as models

    assert "UNetDownscaler" in models.__all__
    assert callable(models.make_trend)


def test_wald_calibration_scales_the_std(scenes):
    # LST follows elevation: 5 % of the fine trend's variance lies inside the coarse cells, so the
    # Wald protocol may narrow the std.
    scene, X = scenes["lst"]
    raw = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    calibrated = Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask)
    assert 0 < calibrated.std_scale_ < 1.0 and calibrated.std_scale_ == calibrated.wald_scale_
    _, std_raw = raw.predict(X, return_std=True)
    _, std_cal = calibrated.predict(X, return_std=True)
    np.testing.assert_allclose(std_cal.values, calibrated.std_scale_ * std_raw.values, rtol=1e-9)
    # by construction, 90 % of the one-level-up errors fall within 1.645 calibrated std
    ratio = calibrated.calibration_ratio_ / calibrated.std_scale_
    assert np.mean(ratio <= 1.6448536269514722) == pytest.approx(0.9, abs=0.03)


def test_within_cell_share_of_the_trend_is_its_variance_inside_the_coarse_cells(scenes):
    """Hand-computed on the fitted fine trend: var(trend - its block means) / var(trend)."""
    scene, X = scenes["lst"]
    model = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    trend = model._trend_cache[1][0]
    blocks = trend.reshape(trend.shape[0] // FACTOR, FACTOR, trend.shape[1] // FACTOR, FACTOR)
    means = np.nanmean(blocks, axis=(1, 3), keepdims=True)
    within = np.nansum((blocks - means) ** 2)
    total = np.nansum((trend - np.nanmean(trend)) ** 2)
    assert model.trend_within_share_ == pytest.approx(within / total, rel=1e-9)
    assert Downscaler(trend="none", calibrate_std=False).fit(scene.coarse, X).trend_within_share_ == 0.0


def test_the_wald_protocol_does_not_narrow_a_std_whose_trend_varies_inside_the_cells():
    """Soil moisture with its 1 km LST: a fifth of the fine trend's variance lies inside the coarse cells
    (the LST's pixel detail), which the protocol one level up cannot see: the std keeps scale 1. LST follows
    elevation, whose detail the block means keep: the protocol narrows the std."""
    from downscale.downscaler import WALD_MAX_WITHIN_SHARE

    for variable, narrowed in (("soil_moisture", False), ("lst", True)):
        scene = ds.datasets.synthetic_scene(variable, seed=0, shape=(200, 200), factor=FACTOR)
        X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, extra=scene.extra)
        model = Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask)
        assert model.std_calibration_ == "wald" and model.wald_scale_ < 1.0
        assert (model.trend_within_share_ <= WALD_MAX_WITHIN_SHARE) == narrowed
        assert model.std_scale_ == (model.wald_scale_ if narrowed else 1.0)
        # Refitted with stations on the same object, the Wald scale of the first fit is not left behind.
        model.fit(scene.coarse, X, mask=scene.mask, stations=scene.stations, station_noise="noise_std")
        assert model.std_calibration_ == "stations" and model.wald_scale_ is None


def test_stations_given_to_fit_calibrate_the_std_by_split_conformal(scenes):
    """The scale is the ceil((n + 1) 0.9)-th smallest |observed - predicted| / (1.645 std) at the stations."""
    scene, X = scenes["soil_moisture"]
    raw = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    fine, std_raw = raw.predict(X, return_std=True)
    observed = scene.stations["value"].to_numpy()
    predicted = ds.validation.extract_at_points(fine, scene.stations)
    spread = ds.validation.extract_at_points(std_raw, scene.stations)
    ok = np.isfinite(predicted) & (spread > 0)
    ratios = np.sort(np.abs(observed[ok] - predicted[ok]) / (1.6448536269514722 * spread[ok]))
    n = ratios.size
    rank = int(np.ceil((n + 1) * 0.9))

    # With the stations kept out of the trend (station_trend=False), they are a plain calibration set.
    model = Downscaler(trend="linear", station_trend=False).fit(
        scene.coarse, X, mask=scene.mask, stations=scene.stations
    )
    assert (model.std_calibration_, model.std_scale_stations_) == ("stations", n)
    assert model.std_scale_ == pytest.approx(ratios[rank - 1], rel=1e-12)
    _, std = model.predict(X, return_std=True)
    np.testing.assert_allclose(std.values, model.std_scale_ * std_raw.values, rtol=1e-12)
    inside = np.abs(observed[ok] - predicted[ok]) <= 1.6448536269514722 * (model.std_scale_ * spread[ok]) * (
        1 + 1e-12
    )
    assert inside.sum() >= rank
    # A station noise is left out of the pixel's std, as calibrate_std does it.
    noisy = Downscaler(trend="linear", station_trend=False).fit(
        scene.coarse, X, mask=scene.mask, stations=scene.stations, station_noise="noise_std"
    )
    expected = ds.validation.calibrate_std(fine, std_raw, scene.stations, noise="noise_std").attrs[
        "std_scale"
    ]
    assert noisy.std_scale_ == pytest.approx(expected, rel=1e-12) and noisy.std_scale_ < model.std_scale_
    # Without stations the Wald protocol sets the scale; with calibrate_std=False nothing does.
    wald = Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask)
    assert (wald.std_calibration_, wald.std_scale_stations_) == ("wald", 0)
    assert raw.std_calibration_ == "none" and raw.std_scale_ == 1.0


def test_stations_in_fit_need_calibrate_std_and_enough_values(scenes):
    scene, X = scenes["soil_moisture"]
    with pytest.warns(
        UserWarning,
        match="stations calibrate the standard deviation or join the trend, and calibrate_std=False with "
        "station_trend=False: they are ignored",
    ):
        model = Downscaler(trend="linear", calibrate_std=False, station_trend=False).fit(
            scene.coarse, X, mask=scene.mask, stations=scene.stations
        )
    assert model.std_scale_ == 1.0
    with pytest.raises(
        ValueError, match="station_noise was given without stations: pass the stations it describes"
    ):
        Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask, station_noise=0.02)
    with pytest.raises(
        ValueError,
        match=r"5 station value\(s\) with a prediction and a positive std: a 90% "
        r"interval needs at least 9",
    ):
        Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask, stations=scene.stations.iloc[:5])


def _held_out_station_errors(scene, X, trend, random_state=0, folds=5):
    """Out-of-fold predictions and stds at the stations, by the documented rule, through the public API.

    Folds are of station locations (in the order of their unique coordinates), permuted with
    ``random_state``; each fold is predicted by a fit on the coarse field and the other folds' stations.
    """
    from downscale.validation.stations import _location_ids

    stations = scene.stations.reset_index(drop=True)
    locations, location_of = np.unique(_location_ids(stations), return_inverse=True)
    fold = (np.random.default_rng(random_state).permutation(locations.size) % folds)[location_of]
    predicted = np.full(len(stations), np.nan)
    spread = np.full(len(stations), np.nan)
    for k in range(folds):
        test = fold == k
        model = Downscaler(trend=trend, station_trend=True, calibrate_std=False).fit(
            scene.coarse, X, mask=scene.mask, stations=stations[~test]
        )
        fine, std = model.predict(X, return_std=True)
        predicted[test] = ds.validation.extract_at_points(fine, stations[test])
        spread[test] = ds.validation.extract_at_points(std, stations[test])
    return stations["value"].to_numpy(), predicted, spread


def test_stations_join_the_trend_when_they_predict_held_out_stations_better(scenes):
    """Soil moisture follows a fine wetness whose block means hardly vary: only stations can teach the trend."""
    scene, X = scenes["soil_moisture"]
    truth_ok = np.isfinite(scene.truth.values)

    def rmse(field):
        return float(np.sqrt(np.mean((field.values - scene.truth.values)[truth_ok] ** 2)))

    without = Downscaler(trend="linear", station_trend=False).fit(
        scene.coarse, X, mask=scene.mask, stations=scene.stations
    )
    model = Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask, stations=scene.stations)
    assert without.station_trend_ is False and model.station_trend_ is True
    table = model.station_cv_.set_index("trend_fitted_on")
    assert table.loc["coarse cells + stations", "selected"]
    assert table.loc["coarse cells + stations", "station_rmse"] < table.loc["coarse cells", "station_rmse"]
    # The held-out station RMSE of the fit without stations is that model's error at the stations.
    observed = scene.stations["value"].to_numpy()
    error = ds.validation.extract_at_points(without.predict(X), scene.stations) - observed
    assert table.loc["coarse cells", "station_rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-12)
    # Stations see every covariate, also those whose block means keep little of their spread.
    assert len(model.features_used_) == len(model.feature_names_) > len(without.features_used_)
    n_used, n_all = len(without.features_used_), len(without.feature_names_)
    assert (
        f" on {n_used} of {n_all} block-mean covariates; residual: "
        in without.predict(X).attrs["downscale_method"]
    )
    assert (
        f" on block-mean covariates and {model.station_values_} station values; residual: "
        in (model.predict(X).attrs["downscale_method"])
    )
    # Against the truth: better, still coherent and within bounds.
    fine = model.predict(X)
    assert rmse(fine) < 0.9 * rmse(without.predict(X))
    assert _coherence_error(fine, scene.coarse) < 1e-9
    assert float(fine.min()) >= 0 and float(fine.max()) <= scene.bounds[1]
    # The std is calibrated on the held-out errors: each station by the fit that left it out.
    observed, predicted, spread = _held_out_station_errors(scene, X, "linear")
    table_rmse = np.sqrt(np.nanmean((predicted - observed) ** 2))
    assert table.loc["coarse cells + stations", "station_rmse"] == pytest.approx(table_rmse, rel=1e-9)
    # They joined because the drop in squared error is larger than one standard error of its mean.
    drop = error**2 - (predicted - observed) ** 2  # one value per station (a single time step)
    in_errors = drop.mean() / (drop.std(ddof=1) / np.sqrt(drop.size))
    assert in_errors > 1
    assert table.loc["coarse cells + stations", "gain_in_standard_errors"] == pytest.approx(
        in_errors, rel=1e-9
    )
    ok = np.isfinite(predicted) & (spread > 0)
    ratios = np.sort(np.abs(observed[ok] - predicted[ok]) / (1.6448536269514722 * spread[ok]))
    rank = int(np.ceil((ok.sum() + 1) * 0.9))
    assert (model.std_calibration_, model.std_scale_stations_) == ("stations", int(ok.sum()))
    assert model.std_scale_ == pytest.approx(ratios[rank - 1], rel=1e-9)


def test_stations_that_do_not_help_stay_out_of_the_trend(scenes):
    """Station values shuffled among the stations carry no fine-scale information: the trend ignores them."""
    scene, X = scenes["soil_moisture"]
    shuffled = scene.stations.copy()
    shuffled["value"] = np.random.default_rng(3).permutation(shuffled["value"].to_numpy())
    model = Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask, stations=shuffled)
    plain = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    assert model.station_trend_ is False
    assert not model.station_cv_.set_index("trend_fitted_on").loc["coarse cells + stations", "selected"]
    np.testing.assert_allclose(model.predict(X).values, plain.predict(X).values, rtol=1e-12)
    # Forced in, they change the trend; the constant trend has nothing to fit them with.
    forced = Downscaler(trend="linear", station_trend=True).fit(
        scene.coarse, X, mask=scene.mask, stations=shuffled
    )
    assert forced.station_trend_ is True
    none = Downscaler(trend="none").fit(scene.coarse, X, mask=scene.mask, stations=scene.stations)
    assert none.station_trend_ is False and none.station_cv_ is None
    with pytest.warns(
        UserWarning, match=r"station_trend=True, but the trend is the constant \('none'\): it has"
    ):
        Downscaler(trend="none", station_trend=True).fit(
            scene.coarse, X, mask=scene.mask, stations=scene.stations
        )
    with pytest.warns(
        UserWarning,
        match=r"8 usable station value\(s\) \(inside the grid, at a time step, on a pixel with covariates\); the "
        r"trend needs at least 10 to be fitted on them too",
    ):
        few = Downscaler(trend="linear", station_trend=True, calibrate_std=False).fit(
            scene.coarse, X, mask=scene.mask, stations=scene.stations.iloc[:8]
        )
    assert few.station_trend_ is False
    with pytest.raises(ValueError, match="station_trend must be 'auto' .*, True or False, got 'yes'"):
        Downscaler(station_trend="yes").fit(scene.coarse, X, mask=scene.mask, stations=scene.stations)


class _CountingRegressor(RegressorMixin, BaseEstimator):
    """Ridge regression that records the rows it was fitted on."""

    def fit(self, X, y):
        self.rows_ = np.asarray(X, dtype=np.float64).copy()
        self.model_ = Ridge(alpha=1.0).fit(X, y)
        return self

    def predict(self, X):
        return self.model_.predict(X)


@pytest.mark.parametrize("temporal", ["per_step", "pooled"])
def test_station_rows_join_the_trend_of_their_own_time_step(temporal):
    """With station_trend=True each day's trend gets that day's station values (all days when pooled)."""
    scene = ds.datasets.synthetic_scene(
        "soil_moisture", seed=1, shape=(100, 100), factor=FACTOR, n_times=2, n_stations=12
    )
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, features=["elevation", "slope"])
    model = Downscaler(trend=_CountingRegressor(), temporal=temporal, station_trend=True).fit(
        scene.coarse, X, mask=scene.mask, stations=scene.stations
    )
    assert model.station_trend_ and model.station_values_ == 24
    n_cells = [int(np.isfinite(scene.coarse.isel(time=t).values).sum()) for t in range(2)]
    stations = scene.stations.reset_index(drop=True)
    if temporal == "per_step":
        assert [len(m.rows_) for m in model.trend_models_] == [n_cells[0] + 12, n_cells[1] + 12]
        # The last rows of day 1's trend are the covariates at day 1's stations.
        day = stations[stations["time"] == scene.coarse["time"].values[1]]
        expected = np.column_stack([ds.validation.extract_at_points(X[n], day) for n in model.features_used_])
        np.testing.assert_allclose(model.trend_models_[1].rows_[-12:], expected, rtol=1e-12)
    else:
        assert [len(m.rows_) for m in model.trend_models_] == [sum(n_cells) + 24]


def test_stations_with_a_time_column_calibrate_a_time_series():
    scene = ds.datasets.synthetic_scene(
        "lst", seed=2, shape=(100, 100), factor=FACTOR, n_times=2, n_stations=15
    )
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    model = Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask, stations=scene.stations)
    assert model.std_calibration_ == "stations"
    assert model.std_scale_stations_ == 30  # 15 stations x 2 days


def test_one_step_of_a_series_keeps_its_date_and_its_own_stations():
    scene = ds.datasets.synthetic_scene(
        "lst", seed=2, shape=(100, 100), factor=FACTOR, n_times=3, n_stations=15
    )
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    day = scene.coarse.isel(time=1)
    with pytest.warns(UserWarning, match="30 of 45 station records have no prediction time step"):
        model = Downscaler(trend="linear", station_trend=False).fit(
            day, X, mask=scene.mask, stations=scene.stations
        )
    assert model.std_scale_stations_ == 15  # that day's records only
    assert model.predict(X)["time"].values == scene.coarse["time"].values[1]


def test_trend_variance_is_computed_when_a_std_is_first_asked_for(scenes):
    """The trend variance's cross-validation refits the trend: a prediction without std skips it."""
    scene, X = scenes["lst"]
    model = Downscaler(trend="rf", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    model.predict(X)
    assert model._trend_variance_value is None
    _, std = model.predict(X, return_std=True)
    expected = (
        Downscaler(trend="rf", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask).trend_variance_
    )
    np.testing.assert_array_equal(model.trend_variance_, expected)
    assert model.trend_variance_[0] > 0  # a forest's out-of-fold errors exceed its in-sample residuals
    with pytest.raises(AttributeError, match="trend_variance_ is set by fit"):
        _ = Downscaler().trend_variance_


def test_predict_reuses_the_fitted_trend_only_for_the_same_covariates_and_mask(scenes):
    scene, X = scenes["lst"]
    model = Downscaler(trend="rf", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    cached = model.predict(X)
    del model._trend_cache  # the trend is then computed from X
    np.testing.assert_array_equal(cached.values, model.predict(X).values)
    changed = X.copy(deep=True)
    changed["elevation"].values[:, :] += 500.0
    refit = Downscaler(trend="rf", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    np.testing.assert_array_equal(refit.predict(changed).values, model.predict(changed).values)
    assert not np.allclose(refit.predict(changed).values, cached.values, equal_nan=True)
    unmasked = refit.predict(X, mask=xr.full_like(scene.mask, True, dtype=bool))
    assert np.isfinite(unmasked.values).sum() > np.isfinite(cached.values).sum()


def test_coarse_gaps_get_the_bilinear_upsampling_of_the_nearest_residuals(scenes):
    from downscale.downscaler import _fill_nearest

    scene, X = scenes["lst"]
    coarse = scene.coarse.copy()
    coarse[5:7, 5:7] = np.nan
    coarse[0, 11] = np.nan
    model = Downscaler(trend="linear", calibrate_std=False).fit(coarse, X)
    residual, variance = model._residual_fine(model._fine_template(X, coarse), 1)
    gaps = np.isnan(np.repeat(np.repeat(coarse.values, FACTOR, axis=0), FACTOR, axis=1))
    filled = coarse.copy(data=_fill_nearest(model.residual_coarse_.values))
    smooth = ds.grid.upsample(filled, FACTOR, "bilinear").values
    np.testing.assert_array_equal(residual[0][gaps], smooth[gaps])
    sill = model.atpk_[0].variogram_.sill + model.atpk_[0].variogram_.nugget
    np.testing.assert_array_equal(variance[0][gaps], sill)
    assert np.all(np.isfinite(residual[0][~gaps])) and np.all(variance[0][~gaps] < sill)


@pytest.mark.filterwarnings("ignore:Degrees of freedom <= 0")
@pytest.mark.parametrize("use_numba", [True, False])
def test_nanstd_rows_is_numpy_nanstd(use_numba, monkeypatch):
    from downscale.downscaler import _nanstd_rows

    monkeypatch.setattr(ds.grid, "USE_NUMBA", use_numba)
    rng = np.random.default_rng(0)
    values = rng.normal(280.0, 20.0, size=(4, 1000))
    values[rng.uniform(size=values.shape) < 0.3] = np.nan
    values[1] = np.nan
    values[2, 1:] = np.nan  # one valid value: no spread
    got = _nanstd_rows(values)
    assert np.isnan(got[1]) and got[2] == 0.0
    for row in (0, 3):
        valid = values[row][np.isfinite(values[row])]
        np.testing.assert_allclose(got[row], np.sqrt(np.mean((valid - valid.mean()) ** 2)), rtol=1e-12)


def test_float32_covariates_give_the_float64_result(scenes):
    # Terrain features are float32 by default: the Downscaler stacks every covariate in float64.
    scene, X = scenes["lst"]
    single = X.astype(np.float32)
    wide = single.astype(np.float64)
    a = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, single).predict(single)
    b = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, wide).predict(wide)
    np.testing.assert_array_equal(a.values, b.values)


def test_the_trend_fingerprint_sees_every_byte_of_any_dtype():
    from downscale.downscaler import _hash_values

    values = np.arange(7, dtype=np.float32)  # 28 bytes: three whole 64-bit words and a 4-byte tail
    changed = values.copy()
    changed[-1] += 1.0
    assert _hash_values(values) != _hash_values(changed)
    assert _hash_values(values) == _hash_values(values.copy())
    mask = np.zeros(9, dtype=bool)
    assert _hash_values(mask) != _hash_values(np.eye(1, 9, 8, dtype=bool)[0])


def test_predict_recomputes_the_trend_when_a_single_covariate_pixel_changes(scenes):
    # One pixel off any sampling lattice: a changed covariate there must change the prediction there.
    scene, X = scenes["lst"]
    model = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    name = model.feature_names_[model._used_index()[0]]
    before = model.predict(X)
    changed = X.copy(deep=True)
    row, column = np.argwhere(np.isfinite(before.values))[1234]
    changed[name].values[row, column] += 10.0 * float(np.nanstd(X[name].values))
    after = model.predict(changed)
    assert after.values[row, column] != before.values[row, column]
    fresh = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    del fresh._trend_cache
    np.testing.assert_array_equal(after.values, fresh.predict(changed).values)
