"""Tests for ``Downscaler(trend="auto")``: the choice of the trend, shrinkage, the Wald check, retention.

The negative control runs on 10 seeds of small scenes whose truth is a smooth random field and whose
covariates (terrain and NDVI of another scene) are unrelated to it: the default must then be no worse
than 1.05 x ATPK of the field alone and no worse than bicubic interpolation.
"""

import warnings

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage
from sklearn.linear_model import LinearRegression

import downscale as ds
from downscale.downscaler import AUTO_CANDIDATES, Downscaler, _kriging_weights
from downscale.kriging.variogram import VariogramModel
from downscale.models.trend import MIN_RETENTION, ShrunkTrend, boosting_rounds

FACTOR = 10
SEEDS = range(10)


def _rmse(field, truth):
    values = np.asarray(field.values if hasattr(field, "values") else field) - truth.values
    return float(np.sqrt(np.nanmean(values**2)))


def _bicubic(coarse, factor):
    """Bicubic interpolation between coarse cell centres (edges held), on the nested fine grid."""
    values = ndimage.zoom(coarse.values, factor, order=3, mode="nearest", grid_mode=True)
    return ds.grid.upsample(coarse, factor).copy(data=values)


def _unrelated_scene(seed, shape=(120, 120)):
    """A smooth random truth, and covariates from an independent synthetic scene."""
    grid = ds.datasets.synthetic_scene("lst", seed=1000 + seed, shape=shape, factor=FACTOR)
    noise = np.random.default_rng(seed).standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, sigma=12, mode="wrap")
    truth = grid.dem.copy(data=280.0 + 3.0 * smooth / smooth.std()).rename("field")
    truth.attrs = {"units": "K"}
    coarse = ds.grid.block_mean(truth, FACTOR)
    X = ds.covariates.build(dem=grid.dem, ndvi=grid.ndvi, location=False, tpi_radii=(1000.0, 5000.0))
    return truth, coarse, X


@pytest.fixture(scope="module")
def negative_control():
    rows = []
    for seed in SEEDS:
        truth, coarse, X = _unrelated_scene(seed)
        auto = Downscaler(calibrate_std=False).fit(coarse, X)
        field_alone = Downscaler(trend="none", calibrate_std=False).fit(coarse, X)
        rows.append(
            dict(
                seed=seed,
                selected=auto.selected_trend_,
                weight=auto.trend_weight_,
                auto=_rmse(auto.predict(X), truth),
                atpk=_rmse(field_alone.predict(X), truth),
                bicubic=_rmse(_bicubic(coarse, FACTOR), truth),
            )
        )
    return rows


@pytest.mark.parametrize("seed", SEEDS)
def test_negative_control_no_worse_than_atpk_of_the_field_or_bicubic(negative_control, seed):
    row = negative_control[seed]
    assert row["auto"] <= 1.05 * row["atpk"], row
    assert row["auto"] <= row["bicubic"], row


def test_negative_control_mostly_keeps_the_constant_trend(negative_control):
    kept = [row["selected"] == "none" or row["weight"] < 0.5 for row in negative_control]
    assert sum(kept) >= 8, negative_control


@pytest.fixture(scope="module")
def lst():
    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
    model = Downscaler(calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    return scene, X, model


def test_lst_follows_elevation_so_a_covariate_trend_is_chosen(lst):
    scene, X, model = lst
    table = model.cv_results_
    assert table["trend"].tolist() == list(AUTO_CANDIDATES)
    assert list(table.columns) == [
        "trend",
        "n_features",
        "weight",
        "cv_rmse",
        "cv_rmse_unshrunk",
        "wald_rmse",
        "score",
        "selected",
    ]
    assert model.selected_trend_ != "none" and table["selected"].sum() == 1
    chosen = table.set_index("trend").loc[model.selected_trend_]
    none = table.set_index("trend").loc["none"]
    assert chosen["score"] < 0.9 and none["score"] == 1.0 and chosen["selected"]
    assert chosen["score"] == pytest.approx(table["score"].min(), rel=0.02)
    assert np.isfinite(none["wald_rmse"]) and np.isfinite(chosen["wald_rmse"])  # 20 x 20 cells: Wald runs
    # The downscaled field beats the constant trend against the fine truth (measured: 0.85 x).
    field_alone = Downscaler(trend="none", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    assert _rmse(model.predict(X), scene.truth) < 0.9 * _rmse(field_alone.predict(X), scene.truth)
    assert f"auto (chose {model.selected_trend_}" in model.predict(X).attrs["downscale_method"]


def test_covariates_whose_block_means_lose_their_spread_are_left_out(lst):
    scene, X, model = lst
    assert model.feature_names_ == list(X.data_vars)
    np.testing.assert_array_equal(model.feature_names_in_, list(X.data_vars))
    retention = dict(zip(model.feature_names_, model.retention_, strict=True))
    assert retention["elevation"] > 0.95 and retention["profile_curvature"] < 0.2
    assert "elevation" in model.features_used_
    assert not {"profile_curvature", "plan_curvature", "tpi_1km"} & set(model.features_used_)
    assert model.trend_models_[0].n_features_in_ == len(model.features_used_)
    # Prediction still needs (and checks) every covariate seen in fit.
    with pytest.raises(ValueError, match=r"X is missing covariate\(s\) \['tpi_1km'\] seen in fit"):
        model.predict(X.drop_vars("tpi_1km"))


def test_applicability_and_shap_use_only_the_features_of_the_trend(lst):
    scene, X, model = lst
    explained = ds.explain.shap_values(model, X, sample=200)
    assert list(explained.values.columns) == model.features_used_
    dissimilarity, inside, _ = ds.explain.applicability(model, X, sample=200)
    assert float(inside.where(scene.mask).mean()) > 0.5


def test_the_tie_rule_prefers_the_simpler_model(rng):
    # The truth is linear in one covariate: trees get close, linear is exact and simplest.
    grid = ds.grid.make_grid((120, 120), 1000.0, crs="EPSG:32632")
    yy, xx = np.mgrid[0:120, 0:120] / 120.0
    a = ndimage.gaussian_filter(rng.standard_normal((120, 120)), 8)
    a /= a.std()
    truth = xr.DataArray(5.0 + 2.0 * a, dims=("y", "x"), coords=grid.coords, name="t")
    X = xr.Dataset({"a": truth.copy(data=a), "ramp": truth.copy(data=xx + yy)})
    model = Downscaler(calibrate_std=False).fit(ds.grid.block_mean(truth, FACTOR), X)
    table = model.cv_results_.set_index("trend")
    assert model.selected_trend_ == "linear" and model.trend_weight_ == 1.0
    assert table.loc["linear", "score"] <= table["score"].min() * 1.02


def test_few_coarse_cells_keep_the_constant_trend_and_skip_the_wald_check():
    scene = ds.datasets.synthetic_scene("lst", seed=3, shape=(50, 50), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation"], location=True)
    model = Downscaler(calibrate_std=False).fit(scene.coarse, X)  # 5 x 5 = 25 cells < 30
    assert model.selected_trend_ == "none" and model.cv_results_["cv_rmse"].isna().all()
    scene = ds.datasets.synthetic_scene("lst", seed=3, shape=(100, 100), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation"], location=True)
    model = Downscaler(calibrate_std=False).fit(scene.coarse, X)  # 10 x 10: the CV runs, Wald does not
    assert model.cv_results_["cv_rmse"].notna().all() and model.cv_results_["wald_rmse"].isna().all()


def test_shrinkage_weight_is_the_least_squares_blend_of_the_cv_residuals(lst):
    scene, X, model = lst
    table = model.cv_results_.set_index("trend")
    for name in ("linear", "rf", "lightgbm"):
        row = table.loc[name]
        assert 0.0 <= row["weight"] <= 1.0
        # The optimum of a - w b over w in [0, 1] is never worse than w = 1 (within rounding of w).
        assert row["cv_rmse"] <= row["cv_rmse_unshrunk"] * (1 + 1e-3)
    if model.trend_weight_ < 1:
        assert isinstance(model.trend_spec_, ShrunkTrend)


def test_kriging_weights_sum_to_one_and_honour_a_known_field():
    yy, xx = np.mgrid[0:8, 0:8] * 1000.0
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    train = np.arange(0, 64, 2)
    test = np.arange(1, 64, 2)
    variogram = VariogramModel("exponential", sill=1.0, range=5000.0)
    neighbours, weights = _kriging_weights(coords, train, test, variogram, 9)
    assert neighbours.shape == weights.shape == (32, 9)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    # Ordinary kriging reproduces a constant exactly, and a flat variogram gives the plain mean.
    values = np.full(64, 3.5)
    np.testing.assert_allclose((weights * values[neighbours]).sum(axis=1), 3.5)
    _, flat = _kriging_weights(coords, train, test, VariogramModel("exponential", sill=0.0, range=1.0), 4)
    np.testing.assert_allclose(flat, 0.25)


@pytest.mark.parametrize("trend", [*AUTO_CANDIDATES, ShrunkTrend("lightgbm", weight=0.5)])
@pytest.mark.parametrize("variable", ["precipitation", "soil_moisture"])
def test_every_candidate_is_coherent_and_within_bounds(trend, variable):
    scene = ds.datasets.synthetic_scene(variable, seed=4, shape=(100, 100), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    mask = scene.mask if variable == "soil_moisture" else None
    fine = Downscaler(trend=trend, calibrate_std=False).fit(scene.coarse, X, mask=mask).predict(X)
    back = ds.grid.block_mean(fine, FACTOR).values
    ok = np.isfinite(scene.coarse.values) & np.isfinite(back)
    assert ok.sum() > 0.8 * np.isfinite(scene.coarse.values).sum()
    np.testing.assert_allclose(back[ok], scene.coarse.values[ok], rtol=1e-9, atol=1e-12)
    low, high = scene.bounds
    values = fine.values[np.isfinite(fine.values)]
    assert values.min() >= low and (high is None or values.max() <= high)


@pytest.mark.parametrize("temporal", ["per_step", "pooled"])
def test_auto_with_a_time_axis(temporal):
    scene = ds.datasets.synthetic_scene("precipitation", seed=2, n_times=2, shape=(100, 100), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"], location=True)
    model = Downscaler(temporal=temporal, calibrate_std=False).fit(scene.coarse, X)
    fine = model.predict(X)
    assert fine.dims == ("time", "y", "x") and model.selected_trend_ in AUTO_CANDIDATES
    back = ds.grid.block_mean(fine, FACTOR).values
    np.testing.assert_allclose(back, scene.coarse.values, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("temporal", ["per_step", "pooled"])
def test_early_stopping_with_a_time_axis_sets_the_rounds_of_every_model(temporal):
    """One round count from the folds of every (sampled) time step; each step's model gets it."""
    scene = ds.datasets.synthetic_scene("lst", seed=2, n_times=2, shape=(100, 100), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"], location=True)
    model = Downscaler(trend="lightgbm", temporal=temporal, calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    assert model.n_rounds_ == model.rounds_cv_.set_index("n_rounds")["cv_rmse"].idxmin() > 0
    assert len(model.trend_models_) == (2 if temporal == "per_step" else 1)
    assert all(m.n_estimators == model.n_rounds_ for m in model.trend_models_)
    fine = model.predict(X)
    back = ds.grid.block_mean(fine, FACTOR, min_valid=1e-9).values
    cells = np.isfinite(back) & np.isfinite(scene.coarse.values)
    np.testing.assert_allclose(back[cells], scene.coarse.values[cells], rtol=1e-9)


def test_auto_is_the_default_and_make_trend_refuses_it():
    assert Downscaler().trend == "auto"
    from downscale.models import make_trend

    with pytest.raises(
        ValueError, match="trend='auto' is a selection among 'none', 'linear', 'rf' and 'lightgbm'"
    ):
        make_trend("auto")


def test_explicit_trends_filter_covariates_by_retention_and_report_no_table(lst):
    scene, X, _ = lst
    model = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    expected = [
        n for n, r in zip(model.feature_names_, model.retention_, strict=True) if r >= MIN_RETENTION["linear"]
    ]
    assert model.features_used_ == expected and 0 < len(expected) < len(model.feature_names_)
    assert model.cv_results_ is None
    assert model.selected_trend_ == "linear" and model.trend_weight_ == 1.0
    # min_retention=0, or a regressor instance, keeps every covariate.
    everything = Downscaler(trend="linear", calibrate_std=False, min_retention=0).fit(
        scene.coarse, X, mask=scene.mask
    )
    assert everything.features_used_ == everything.feature_names_
    instance = Downscaler(trend=LinearRegression(), calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    assert instance.features_used_ == instance.feature_names_


def test_a_named_trend_without_any_informative_covariate_is_an_error(lst):
    scene, X, _ = lst
    noise = X[["profile_curvature", "plan_curvature"]]  # block means keep ~4 % of their spread
    with pytest.raises(ValueError, match=r"No covariate keeps 20% of its fine spread .* min_retention=0"):
        Downscaler(trend="rf", calibrate_std=False).fit(scene.coarse, noise, mask=scene.mask)
    with pytest.raises(ValueError, match="min_retention must be None .* got 2"):
        Downscaler(min_retention=2).fit(scene.coarse, X)


@pytest.mark.parametrize("name", ["linear", "lightgbm"])
def test_trend_weight_cv_gives_a_named_trend_the_weight_auto_estimates_for_it(lst, name):
    """Same folds, same covariates, same least-squares blend: the weight of the auto table's row."""
    scene, X, auto = lst
    # The auto table scores LightGBM's 300 rounds: the same model without early stopping.
    model = Downscaler(trend=name, trend_weight="cv", early_stopping=False, calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    row = auto.cv_results_.set_index("trend").loc[name]
    assert model.trend_weight_ == row["weight"]
    table = model.cv_results_.set_index("trend")
    assert table.index.tolist() == ["none", name] and table.loc[name, "selected"]
    for column in ("weight", "cv_rmse", "cv_rmse_unshrunk"):
        assert table.loc[name, column] == pytest.approx(row[column], rel=1e-12), column
    assert table.loc["none", "cv_rmse"] == pytest.approx(
        auto.cv_results_.set_index("trend").loc["none", "cv_rmse"]
    )
    method = model.predict(X).attrs["downscale_method"]
    if model.trend_weight_ < 1:
        assert isinstance(model.trend_spec_, ShrunkTrend) and model.trend_spec_.weight == model.trend_weight_
        assert f"trend: {name} (weight {model.trend_weight_:.2f} from spatial CV) on" in method


def test_trend_weight_cv_shrinks_a_trend_on_unrelated_covariates_to_the_field_alone():
    """On the negative control's first scene lightgbm as fitted is worse than ATPK of the field alone."""
    truth, coarse, X = _unrelated_scene(0)
    as_fitted = Downscaler(trend="lightgbm", early_stopping=False, calibrate_std=False).fit(coarse, X)
    weighed = Downscaler(trend="lightgbm", trend_weight="cv", early_stopping=False, calibrate_std=False).fit(
        coarse, X
    )
    field_alone = Downscaler(trend="none", calibrate_std=False).fit(coarse, X)
    assert weighed.trend_weight_ < 0.5
    assert _rmse(weighed.predict(X), truth) <= 1.05 * _rmse(field_alone.predict(X), truth)
    assert _rmse(weighed.predict(X), truth) < _rmse(as_fitted.predict(X), truth)


def test_a_fixed_trend_weight_blends_the_fitted_trend_with_its_mean(lst):
    scene, X, _ = lst
    full = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    half = Downscaler(trend="linear", trend_weight=0.5, calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    assert half.trend_weight_ == 0.5 and half.cv_results_ is None and full.trend_weight_ == 1.0
    features = np.column_stack([X[n].values.ravel() for n in full.features_used_])[:50]
    f = full.trend_models_[0].predict(features)
    mean = half.trend_models_[0].mean_
    np.testing.assert_allclose(half.trend_models_[0].predict(features), mean + 0.5 * (f - mean), rtol=1e-12)
    assert "trend: linear (weight 0.50) on" in half.predict(X).attrs["downscale_method"]
    # Weight 1 is the trend as fitted.
    one = Downscaler(trend="linear", trend_weight=1, calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    np.testing.assert_array_equal(one.predict(X).values, full.predict(X).values)


def test_bad_trend_weights_are_refused_with_what_is_expected(lst):
    scene, X, _ = lst
    expected = r"trend_weight must be None \(the default\), 'cv' .* or a number from 0 .* to 1 .*, got "
    for bad, shown in (("sometimes", "'sometimes'"), (1.5, "1.5"), (-0.1, "-0.1"), (True, "True")):
        with pytest.raises(ValueError, match=expected + shown):
            Downscaler(trend="linear", trend_weight=bad).fit(scene.coarse, X, mask=scene.mask)
    with pytest.raises(
        ValueError, match=r"trend_weight=0.5 with trend='auto': the selection estimates .* trend='lightgbm'"
    ):
        Downscaler(trend_weight=0.5).fit(scene.coarse, X, mask=scene.mask)


def test_trend_weight_cv_on_too_few_cells_keeps_the_trend_as_fitted_and_says_so():
    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(50, 50), factor=FACTOR)  # 5 x 5 cells
    X = ds.covariates.build(dem=scene.dem, features=["elevation"])
    with pytest.warns(
        UserWarning, match=r"too few to cross-validate the weight .* needs 30\); it is used as fitted"
    ):
        model = Downscaler(trend="linear", trend_weight="cv", calibrate_std=False).fit(scene.coarse, X)
    assert model.trend_weight_ == 1.0


def test_early_stopping_scores_every_round_count_on_the_folds_of_the_selection(lst):
    """The curve's ends are rows of the auto table: zero rounds is the constant, 300 the unstopped trees."""
    scene, X, auto = lst
    model = Downscaler(trend="lightgbm", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    curve = model.rounds_cv_.set_index("n_rounds")["cv_rmse"]
    table = auto.cv_results_.set_index("trend")
    assert curve.index.tolist() == [0, *boosting_rounds(300).tolist()]
    assert curve.loc[0] == pytest.approx(table.loc["none", "cv_rmse"], rel=1e-12)
    assert curve.loc[300] == pytest.approx(table.loc["lightgbm", "cv_rmse_unshrunk"], rel=1e-12)
    # LST follows elevation: the trees help, and the least out-of-fold error sets the rounds.
    assert 0 < model.n_rounds_ < 300 and model.n_rounds_ == curve.idxmin()
    assert model.rounds_cv_["selected"].sum() == 1 and model.trend_models_[0].n_estimators == model.n_rounds_
    assert model.cv_results_ is None and model.trend_weight_ == 1.0 and model.selected_trend_ == "lightgbm"
    method = model.predict(X).attrs["downscale_method"]
    assert f"trend: lightgbm ({model.n_rounds_} rounds from spatial CV) on" in method
    from downscale.validation.report import _selection_lines

    text = "\n".join(_selection_lines(model))
    assert f"Trend: **lightgbm** ({model.n_rounds_} rounds from spatial CV), named by the user" in text
    assert "Boosting rounds chosen by spatial cross-validation" in text and "| n_rounds |" in text
    # With trend_weight="cv" the weight comes from the same curve, at the chosen rounds.
    weighed = Downscaler(trend="lightgbm", trend_weight="cv", calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    assert weighed.n_rounds_ == model.n_rounds_
    row = weighed.cv_results_.set_index("trend").loc["lightgbm"]
    assert row["cv_rmse_unshrunk"] == pytest.approx(curve.min(), rel=1e-12)
    assert row["cv_rmse"] <= row["cv_rmse_unshrunk"]
    # Without early stopping: LightGBMTrend's 300 rounds, no curve.
    plain = Downscaler(trend="lightgbm", early_stopping=False, calibrate_std=False).fit(
        scene.coarse, X, mask=scene.mask
    )
    assert plain.n_rounds_ is None and plain.rounds_cv_ is None
    assert plain.trend_models_[0].n_estimators == 300


def test_early_stopping_on_unrelated_covariates_keeps_the_mean_and_says_so():
    """The negative control's first scene: no round beats the constant on held-out blocks."""
    truth, coarse, X = _unrelated_scene(0)
    as_fitted = Downscaler(trend="lightgbm", early_stopping=False, calibrate_std=False).fit(coarse, X)
    with pytest.warns(UserWarning, match=r"no boosting round predicts better than the constant mean"):
        stopped = Downscaler(trend="lightgbm", calibrate_std=False).fit(coarse, X)
    field_alone = Downscaler(trend="none", calibrate_std=False).fit(coarse, X)
    assert stopped.n_rounds_ == 0 and stopped.trend_spec_ == "none"
    np.testing.assert_allclose(stopped.predict(X).values, field_alone.predict(X).values, rtol=1e-12)
    assert _rmse(stopped.predict(X), truth) < _rmse(as_fitted.predict(X), truth)
    method = stopped.predict(X).attrs["downscale_method"]
    assert "trend: lightgbm (0 rounds from spatial CV: the constant mean) on" in method
    with pytest.raises(
        ValueError, match=r"trend='lightgbm' .* kept 0 boosting rounds: .* early_stopping=False"
    ):
        ds.explain.shap_values(stopped, X, sample=50)


def test_the_wald_calibration_keeps_the_rounds_of_the_fitted_trend():
    """One level up the helper refits the trend as fitted: a 'lightgbm' spec keeps its 300 rounds there,
    even when the model's early_stopping is on (as when trend="auto" chose LightGBM at full weight),
    although early stopping would keep none of them on this storm."""
    from downscale.run import _fit_tiled

    scene = ds.datasets.synthetic_scene("precipitation", seed=0, shape=(200, 200), factor=FACTOR)
    X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"], location=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _fit_tiled(Downscaler(trend="lightgbm", early_stopping=False), scene.coarse, X, None, 5)
        assert model.trend_spec_ == "lightgbm" and model.std_scale_ != 1.0
        scale = model.std_scale_
        model.set_params(early_stopping=True)
        assert model._wald_scale(*model._wald_inputs) == scale


def test_early_stopping_leaves_other_trends_and_small_scenes_alone(lst):
    scene, X, _ = lst
    rf = Downscaler(trend="rf", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    assert rf.n_rounds_ is None and rf.rounds_cv_ is None
    small = ds.datasets.synthetic_scene("lst", seed=0, shape=(50, 50), factor=FACTOR)  # 25 cells
    Xs = ds.covariates.build(dem=small.dem, features=["elevation"])
    model = Downscaler(trend="lightgbm", calibrate_std=False).fit(small.coarse, Xs)
    assert model.n_rounds_ is None and model.trend_models_[0].n_estimators == 300
    with pytest.raises(ValueError, match=r"early_stopping must be True .* or False .*, got 'yes'"):
        Downscaler(trend="lightgbm", early_stopping="yes").fit(scene.coarse, X, mask=scene.mask)


def test_report_and_demo_show_the_selection(lst, tmp_path, monkeypatch, capsys):
    scene, X, model = lst
    from downscale.validation.report import write_report

    path = write_report(tmp_path / "report", model.predict(X), model=model, n_boot=10)
    text = path.read_text()
    assert "## Trend selection" in text and f"**{model.selected_trend_}**" in text
    assert "| none |" in text and "cv_rmse" in text
    assert "Covariates left out of the trend" in text and "profile_curvature" in text

    from downscale import cli

    # A small scene on which the constant trend wins keeps the demo quick (no SHAP of a forest).
    small = ds.datasets.synthetic_scene("precipitation", seed=0, shape=(200, 200), factor=FACTOR)
    monkeypatch.setattr(ds.datasets, "synthetic_scene", lambda variable, seed=0: small)
    assert cli.main(["demo", "--output", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "trend chosen by spatial cross-validation: none" in printed
    assert "cv_rmse_unshrunk" in printed
    assert "**none**" in (tmp_path / "demo" / "report.md").read_text()
