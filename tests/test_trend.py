"""Tests for the pixel-level trend regressors."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import downscale as ds
from downscale.models.trend import (
    MIN_RETENTION,
    ClipToRange,
    DropCollinear,
    LightGBMTrend,
    ShrunkTrend,
    make_trend,
    retention,
)


def _expected_failures(estimator):
    if isinstance(estimator, LightGBMTrend):
        # Row subsampling (bagging) draws rows, not weights, as scikit-learn's own forests do.
        return {"check_sample_weight_equivalence_on_dense_data": "bagging is not weight-equivalent"}
    return {}


@parametrize_with_checks(
    [LightGBMTrend(n_estimators=20), ClipToRange(), DropCollinear(), ShrunkTrend("linear", weight=0.5)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_lightgbm_small_sample_defaults_learn_a_step_from_200_rows():
    rng = np.random.default_rng(1)
    X = rng.uniform(size=(200, 3))
    y = 2.0 * (X[:, 0] > 0.3) + X[:, 1] + 0.05 * rng.standard_normal(200)
    test = rng.uniform(size=(500, 3))
    truth = 2.0 * (test[:, 0] > 0.3) + test[:, 1]
    small = LightGBMTrend().fit(X, y)
    assert np.sqrt(np.mean((small.predict(test) - truth) ** 2)) < 0.2


def test_staged_predictions_are_the_models_with_fewer_rounds():
    """Boosting is sequential: the first k rounds of one fit are the fit with n_estimators=k."""
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(250, 3))
    y = 2.0 * (X[:, 0] > 0.3) + np.sin(6 * X[:, 1]) + 0.1 * rng.standard_normal(250)
    staged = LightGBMTrend().fit(X, y).staged_predict(X, [1, 7, 300])
    for row, k in zip(staged, (1, 7, 300), strict=True):
        np.testing.assert_array_equal(row, LightGBMTrend(n_estimators=k).fit(X, y).predict(X))
    with pytest.raises(ValueError, match=r"rounds must be from 1 to n_estimators=300, got \[0, 5\]"):
        LightGBMTrend().fit(X, y).staged_predict(X, [0, 5])


@pytest.mark.parametrize("spec", ["lightgbm", "rf", "linear", "none"])
def test_make_trend_recovers_a_linear_field(spec):
    rng = np.random.default_rng(2)
    X = rng.uniform(size=(300, 2))
    y = 3.0 * X[:, 0] - X[:, 1] + 1.0
    model = make_trend(spec).fit(X, y)
    prediction = model.predict(X)
    if spec == "none":
        np.testing.assert_allclose(prediction, y.mean())
    elif spec == "linear":
        np.testing.assert_allclose(prediction, y, atol=1e-2)
    else:
        assert np.sqrt(np.mean((prediction - y) ** 2)) < 0.15


def test_linear_trend_does_not_extrapolate():
    X = np.array([[0.0], [1.0], [2.0]])
    model = make_trend("linear").fit(X, 2 * X[:, 0])
    np.testing.assert_allclose(model.predict([[100.0]]), model.predict([[2.0]]))


def test_make_trend_errors():
    with pytest.raises(ValueError, match="trend must be one of"):
        make_trend("xgboost")
    with pytest.raises(ValueError, match="trend='auto' is a selection among"):
        make_trend("auto")
    with pytest.raises(TypeError, match="fit/predict"):
        make_trend(object())


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_shrunk_trend_blends_the_estimator_with_the_mean(weight):
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(200, 2))
    y = 4.0 * X[:, 0] + 1.0
    model = ShrunkTrend("linear", weight=weight).fit(X, y)
    full = make_trend("linear").fit(X, y)
    test = rng.uniform(size=(50, 2))
    np.testing.assert_allclose(
        model.predict(test), y.mean() + weight * (full.predict(test) - y.mean()), rtol=1e-12
    )
    assert model.mean_ == pytest.approx(y.mean())


def test_shrunk_trend_refuses_a_weight_outside_0_1():
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\], got 1.5"):
        ShrunkTrend("linear", weight=1.5).fit(np.zeros((5, 1)), np.arange(5.0))


def test_retention_of_block_means():
    # A ramp keeps its spread in 2 x 2 block means; a checkerboard loses all of it.
    ramp = np.add.outer(np.arange(8.0), np.arange(8.0))
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(float)
    blocks = [a.reshape(4, 2, 4, 2).mean(axis=(1, 3)) for a in (ramp, checker)]
    fine_std = [ramp.std(), checker.std()]
    np.testing.assert_allclose(
        retention(fine_std, [b.std() for b in blocks]), [ramp[::2, ::2].std() / ramp.std(), 0.0]
    )
    assert retention(0.0, 0.0) == 0.0
    assert (
        MIN_RETENTION["linear"]
        > MIN_RETENTION["rf"]
        == MIN_RETENTION["lightgbm"]
        > MIN_RETENTION["none"]
        == 0
    )


def test_drop_collinear_leaves_out_combinations_of_the_features_before_them():
    """Oblique coordinates are exact combinations of easting and northing; lon/lat nearly are in UTM."""
    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=10)
    X = ds.covariates.build(dem=scene.dem, location=True, features=["elevation", "slope"])
    names = list(X.data_vars)
    table = np.column_stack([X[n].values.ravel() for n in names])
    kept = [n for n, k in zip(names, DropCollinear().fit(table).support_, strict=True) if k]
    assert kept == ["elevation", "slope", "easting", "northing"]
    # A feature correlated with the others but not a combination of them stays.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 300))
    noisy = np.column_stack([a, b, a + b + 0.1 * rng.normal(size=300)])
    assert DropCollinear().fit(noisy).support_.tolist() == [True, True, True]
    assert DropCollinear().fit(np.ones((5, 2))).transform(np.ones((3, 2))).shape == (3, 1)


def test_linear_trend_coefficients_stay_small_with_the_whole_location_set():
    """With every location covariate the ridge fit used to split +-13 K between lon and easting."""
    scene = ds.datasets.synthetic_scene("lst", seed=0)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
    names = ["elevation", "ndvi", "easting", "northing", "lon", "lat", "oblique_30", "oblique_60"]
    model = ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X[names], mask=scene.mask)
    pipeline = model.trend_models_[0]
    kept = [n for n, k in zip(names, pipeline[0].support_, strict=True) if k]
    assert kept == ["elevation", "ndvi", "easting", "northing"]
    assert np.max(np.abs(pipeline[-1].coef_)) < 6.0  # K per standard deviation of a covariate
    shap = ds.explain.global_importance(model, X[names], sample=200)
    assert set(shap.loc[shap["mean_abs_shap"] == 0].index) == {"lon", "lat", "oblique_30", "oblique_60"}
