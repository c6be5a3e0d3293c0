"""Skill claims of the Downscaler on the four default synthetic scenes (400 x 400 fine, 16 x 16 coarse, seed 0).

The covariates are those a user of the variable has: terrain, NDVI and location, and the scene's
extra ones (``scene.extra``, with errors: see :func:`downscale.datasets.synthetic_scene`): for NO2 an
emission inventory, for soil moisture a 1 km land surface temperature (DISPATCH). Soil moisture is
also measured without the LST (case ``soil_moisture_terrain_only``): its fine detail then follows
covariates whose block means hardly vary, the hard case. Without the inventory nothing explains the
NO2 hot spots and plumes below 25 km: trend="lightgbm" was 0.966 x bilinear, the default 0.92 (ATPK
of the field alone 0.916).

Measured figures (trend="lightgbm", its boosting rounds chosen by spatial CV on the coarse cells,
``early_stopping=True``, on the covariates whose block means keep at least 20 % of their fine spread),
RMSE as a fraction of bilinear interpolation's, rounds kept, and coverage of nominal 90 % intervals:
lst 0.728 (67 rounds) / 0.89, precipitation 0.513 (0 rounds: the constant mean, ATPK of the field; a
warning says so) / 0.96, no2 0.772 (300) / 0.88, soil moisture 0.790 (67) / 0.89, without the LST 0.931
(20) / 0.88. With LightGBM's 300 rounds (``early_stopping=False``): 0.745, 0.913, 0.772, 0.744, 0.856.
The soil-moisture coverage holds because the Wald protocol no longer narrows the std of a trend that
varies inside the coarse cells (a fifth of its variance there; before, Wald scale 0.33 and coverage
0.39). The terrain-only case's 0.8 x bilinear target is not met: it is pinned below as a strict
expected failure so that an improvement shows up. With ``trend_weight="cv"`` as well
(the stopped trees shrunk toward the mean by the blend weight of the same cross-validation): lst 0.721
(weight 0.95), precipitation 0.513, no2 0.772 (1.00), soil moisture 0.795 (0.94), without the LST 0.931
(1.00).

With the scene's 40 stations given to fit (``fit(..., stations=..., station_noise="noise_std")``),
they join the trend where held-out stations say it helps by more than one standard error (soil
moisture and NO2, with every covariate and LightGBM's 300 rounds) and calibrate the std (split
conformal with the station noise left out; on held-out errors when they joined the trend).
trend="lightgbm" then gives RMSE / bilinear lst 0.728, precipitation 0.513, no2 0.779 (joined, gain
1.28 standard errors, yet 1 % worse against truth than without them), soil moisture 0.596 (joined),
without the LST 0.674, and 90 % coverage lst 0.88, precipitation 0.89, no2 0.88, soil moisture 0.973 (a
hair over 0.97), without the LST 0.966. The stations see the soil-moisture error below the coarse scale
that neither the coarse cells nor the Wald protocol can. (With 300 rounds the LST station coverage was
0.76: the scale, the 37th of 40 ratios of which most are zero, is a noisy estimate when the station
noise, 0.5 K, is as large as the model's error.) The default with the stations is within 5 % of the
best candidate given the same stations on every case (soil moisture without the LST 0.0386 linear vs
0.0373 lightgbm, both with the stations; 0.70 x bilinear).

The default (trend="auto") against the best of its candidates, each alone on the covariates the
selection gives it (the positive control; RMSE against truth, measured by
``benchmarks/bench_selection.py --controls``): lst 0.4605 (linear) vs 0.4605 (linear); precipitation
2.155 (none) vs 2.155 (none); no2 4.007 (lightgbm) vs 4.007 (lightgbm; rf 4.328, none 4.755); soil
moisture 0.02778 (linear, weight 0.93) vs 0.02777 (linear; lightgbm 0.0411, none 0.0545). Without the
LST: 0.0533 (linear, weight 0.93) vs 0.0474 (lightgbm), 1.12 x: on the coarse cells the candidates are
all but tied (unshrunk out-of-fold RMSE, logit space: none 0.505, linear 0.484, rf 0.483, lightgbm
0.503), so nothing the coarse data show says that the trees' use of slope and TPI pays off at 1 km;
that case is pinned as a strict expected failure.
As a fraction of bilinear the default gives lst 0.51, precipitation 0.51, no2 0.77, soil moisture 0.50
(without the LST 0.96). Its 90 % intervals, calibrated by the Wald protocol, cover lst 0.77,
precipitation 0.96, no2 0.88 and soil moisture 0.94 of the truth pixels (without the LST 0.84). The
Wald scale (0.29-0.56) narrows an uncalibrated std that covers 0.97-1.00 on the first three scenes; the
scale that would be right is 0.65-1.4 times it there (lst 1.38: pinned as a strict expected failure).
On soil moisture the error sits inside the coarse cells, where the protocol cannot see it (one level
up, the LST's block means are free of its 1 K pixel noise): the scale that would be right is 2.2-3.9
times the Wald scale. There 14-39 % of the fine trend's variance lies inside the coarse cells (0-7.5 %
on the other scenes), so the protocol does not narrow the std (``WALD_MAX_WITHIN_SHARE``); before,
the soil-moisture coverage was 0.55 (without the LST 0.30).
"""

import numpy as np
import pytest

import downscale as ds
from downscale.downscaler import AUTO_CANDIDATES, Downscaler
from downscale.models.trend import MIN_RETENTION

pytestmark = pytest.mark.slow

#: The cases: a scene's variable and whether its extra covariates (``scene.extra``) are used. Soil
#: moisture is measured twice: with the 1 km LST a soil-moisture user has, and on terrain, NDVI and
#: location alone, the hard case where the fine detail follows covariates whose block means hardly vary.
CASES = {
    "lst": ("lst", True),
    "precipitation": ("precipitation", True),
    "no2": ("no2", True),
    "soil_moisture": ("soil_moisture", True),
    "soil_moisture_terrain_only": ("soil_moisture", False),
}


def _met(lst, precipitation, no2, soil_moisture, soil_moisture_terrain_only):
    """Whether a target is met, per case (strict expected failures where it is not)."""
    return dict(zip(CASES, (lst, precipitation, no2, soil_moisture, soil_moisture_terrain_only), strict=True))


RATIO_MET = _met(True, True, True, True, False)
WEIGHED_RATIO_MET = _met(True, True, True, True, False)
COVERAGE_MET = _met(True, True, True, True, True)
DEFAULT_COVERAGE_MET = _met(False, True, True, True, True)
STATION_COVERAGE_MET = _met(True, True, True, False, True)
DEFAULT_RATIO_MET = _met(True, True, True, True, False)
POSITIVE_CONTROL_MET = _met(True, True, True, True, False)
STATION_RATIO_MET = _met(True, True, True, True, True)
STATION_TREND_JOINED = _met(False, False, True, True, True)


def _xfail_unless(met, result, request, reason):
    """Mark the test a strict expected failure for the scenes where ``met`` says the target is not met yet."""
    if not met[result["case"]]:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def _coverage_of_90_percent_intervals(fine, std, truth, valid):
    """Share of the valid truth pixels inside fine +- 1.645 std (nominal 90 % intervals)."""
    inside = np.abs(fine.values - truth.values) <= 1.6448536269514722 * std.values
    return float(np.mean(inside[valid]))


@pytest.fixture(scope="module", params=list(CASES))
def result(request):
    case = request.param
    variable, with_extra = CASES[case]
    scene = ds.datasets.synthetic_scene(variable, seed=0)
    # The covariates a user of the variable has: terrain, NDVI, location, and the scene's extra ones
    # (NO2: an emission inventory; soil moisture: a 1 km LST).
    extra = scene.extra if with_extra else None
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, extra=extra)
    mask = scene.mask if variable in ("lst", "soil_moisture") else None
    model = Downscaler(trend="lightgbm").fit(scene.coarse, X, mask=mask)
    fine, std = model.predict(X, return_std=True)
    at_stations = Downscaler(trend="lightgbm").fit(
        scene.coarse, X, mask=mask, stations=scene.stations, station_noise="noise_std"
    )
    fine_stations, std_stations = at_stations.predict(X, return_std=True)
    trend_only = Downscaler(trend="lightgbm", residual="none", calibrate_std=False).fit(
        scene.coarse, X, mask=mask
    )
    valid = np.isfinite(scene.truth.values)

    def rmse(field):
        return float(np.sqrt(np.nanmean((field.values - scene.truth.values)[valid] ** 2)))

    weighed = Downscaler(trend="lightgbm", trend_weight="cv", calibrate_std=False).fit(
        scene.coarse, X, mask=mask
    )
    auto = Downscaler().fit(scene.coarse, X, mask=mask)
    fine_default, std_default = auto.predict(X, return_std=True)
    candidates = {}
    for name in AUTO_CANDIDATES:
        used = [
            n for n, r in zip(auto.feature_names_, auto.retention_, strict=True) if r >= MIN_RETENTION[name]
        ]
        # The candidate as the selection scores it (LightGBM with its 300 rounds).
        alone = Downscaler(trend=name, calibrate_std=False, early_stopping=False).fit(
            scene.coarse, X[used], mask=mask
        )
        candidates[name] = rmse(alone.predict(X[used]))
    # The same with the scene's 40 stations given to fit (they join a trend where that helps).
    auto_stations = Downscaler(calibrate_std=False).fit(scene.coarse, X, mask=mask, stations=scene.stations)
    candidates_stations = {}
    for name in AUTO_CANDIDATES:
        alone = Downscaler(trend=name, calibrate_std=False, early_stopping=False).fit(
            scene.coarse, X, mask=mask, stations=scene.stations
        )
        candidates_stations[name] = rmse(alone.predict(X))

    return dict(
        case=case,
        variable=variable,
        rmse_default=rmse(fine_default),
        fine_default=fine_default,
        std_default=std_default,
        rmse_candidates=candidates,
        rmse_default_stations=rmse(auto_stations.predict(X)),
        rmse_candidates_stations=candidates_stations,
        at_stations=at_stations,
        rmse_stations=rmse(fine_stations),
        scene=scene,
        fine=fine,
        std=std,
        fine_stations=fine_stations,
        std_stations=std_stations,
        valid=valid,
        rmse=rmse(fine),
        rmse_none=rmse(trend_only.predict(X)),
        rmse_weighed=rmse(weighed.predict(X)),
        rmse_bilinear=rmse(ds.grid.upsample(scene.coarse, scene.factor, "bilinear")),
    )


def test_coherent_to_1e6_and_within_bounds(result):
    scene, fine = result["scene"], result["fine"]
    back = ds.grid.block_mean(fine, scene.factor).values
    c = scene.coarse.values
    ok = np.isfinite(c) & np.isfinite(back)
    assert ok.sum() > 0.9 * np.isfinite(c).sum()
    assert np.max(np.abs(back[ok] - c[ok]) / np.abs(c[ok]).clip(1e-12)) < 1e-6
    low, high = scene.bounds
    values = fine.values[np.isfinite(fine.values)]
    assert low is None or values.min() >= low
    assert high is None or values.max() <= high
    assert not np.isnan(fine.values[result["valid"]]).any()


def test_no_worse_than_the_trend_alone(result):
    assert result["rmse"] <= result["rmse_none"]


def test_rmse_with_the_cv_weight_at_most_0_8_of_bilinear(result, request):
    """trend="lightgbm", trend_weight="cv": the trees shrunk toward the mean by the spatial CV's blend weight."""
    _xfail_unless(WEIGHED_RATIO_MET, result, request, "skill target not met yet (see module notes)")
    assert result["rmse_weighed"] <= 0.8 * result["rmse_bilinear"]


def test_rmse_at_most_0_8_of_bilinear(result, request):
    _xfail_unless(RATIO_MET, result, request, "skill target not met yet (see module notes)")
    assert result["rmse"] <= 0.8 * result["rmse_bilinear"]


def test_90_percent_intervals_cover_80_to_97_percent(result, request):
    _xfail_unless(COVERAGE_MET, result, request, "std calibration misses (see module notes)")
    fine, std, truth = result["fine"], result["std"], result["scene"].truth
    coverage = _coverage_of_90_percent_intervals(fine, std, truth, result["valid"])
    assert 0.80 <= coverage <= 0.97, coverage


def test_90_percent_intervals_of_the_default_cover_80_to_97_percent(result, request):
    """The default's std, calibrated by the Wald protocol (no stations)."""
    _xfail_unless(DEFAULT_COVERAGE_MET, result, request, "Wald calibration too narrow (see module notes)")
    fine, std, truth = result["fine_default"], result["std_default"], result["scene"].truth
    coverage = _coverage_of_90_percent_intervals(fine, std, truth, result["valid"])
    assert 0.80 <= coverage <= 0.97, coverage


def test_90_percent_intervals_calibrated_at_the_stations_cover_80_to_97_percent(result, request):
    _xfail_unless(STATION_COVERAGE_MET, result, request, "40 stations set a noisy scale (see module notes)")
    fine, std, truth = result["fine_stations"], result["std_stations"], result["scene"].truth
    if not result["at_stations"].station_trend_:  # the stations then only scale the std
        np.testing.assert_array_equal(fine.values, result["fine"].values)
    coverage = _coverage_of_90_percent_intervals(fine, std, truth, result["valid"])
    assert 0.80 <= coverage <= 0.97, coverage


def test_rmse_with_the_stations_at_most_0_8_of_bilinear(result, request):
    """trend="lightgbm" given the scene's 40 stations (they join the trend where held-out stations say so)."""
    _xfail_unless(STATION_RATIO_MET, result, request, "skill target not met yet (see module notes)")
    assert result["at_stations"].station_trend_ == STATION_TREND_JOINED[result["case"]]
    assert result["rmse_stations"] <= 0.8 * result["rmse_bilinear"]


def test_default_with_the_stations_within_5_percent_of_the_best_candidate_and_better_than_bilinear(result):
    """The positive control when the scene's stations are given to fit (the candidates get them too)."""
    assert result["rmse_default_stations"] <= 1.05 * min(result["rmse_candidates_stations"].values())
    assert result["rmse_default_stations"] <= result["rmse_bilinear"]


def test_default_rmse_at_most_0_8_of_bilinear(result, request):
    _xfail_unless(DEFAULT_RATIO_MET, result, request, "skill target not met yet (see module notes)")
    assert result["rmse_default"] <= 0.8 * result["rmse_bilinear"]


def test_positive_control_default_within_5_percent_of_the_best_candidate(result, request):
    _xfail_unless(POSITIVE_CONTROL_MET, result, request, "selection misses (see module notes)")
    assert result["rmse_default"] <= 1.05 * min(result["rmse_candidates"].values())


def test_default_no_worse_than_bilinear(result):
    assert result["rmse_default"] <= result["rmse_bilinear"]
