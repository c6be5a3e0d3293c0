"""Cost and skill of ``Downscaler(trend="auto")``: fit time against a fixed LightGBM trend, and the controls.

1. Fit time (always): the default scene (``synthetic_scene()``: LST, 400 x 400 fine, 16 x 16 coarse,
   factor 25) with the demo's covariates; ``Downscaler()`` (the selection, then the chosen trend) against
   ``Downscaler(trend="lightgbm", early_stopping=False)``, both with the default std calibration. Median of ``--repeats`` runs,
   alternated so that both see the same machine load. Target: ratio <= 3.
2. Fit time with the scene's 40 stations (always), on the LST scene (they stay out of the trend) and
   the soil-moisture scene (they join it): against the fit without stations (Wald calibration), the
   stations as a calibration set only, and the default (the held-out comparison of 5 folds decides
   whether they join the trend).
3. ``--controls``: the positive control (the four default scenes: RMSE against the fine truth of the
   default and of every candidate alone, each on the covariates the selection gives it; target: default
   within 5 % of the best candidate; the ``all:`` columns fit the candidates on every covariate, which
   measures the retention filter) and the negative control (10 seeds of 120 x 120 scenes, factor 10,
   whose truth is a smooth random field unrelated to the covariates; target: default <= 1.05 x ATPK of
   the field alone and <= bicubic interpolation). The negative control is also a test
   (``tests/test_selection.py``).

Run: ``python benchmarks/bench_selection.py`` (a minute) or ``... --controls`` (about ten minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import downscale as ds
from downscale.downscaler import AUTO_CANDIDATES, Downscaler
from downscale.models.trend import MIN_RETENTION


def fit_time(repeats):
    scene = ds.datasets.synthetic_scene()
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
    chosen = Downscaler().fit(scene.coarse, X)
    times = {"auto": [], "lightgbm": [], "chosen": []}
    for _ in range(repeats):
        for trend, spec in (("auto", "auto"), ("lightgbm", "lightgbm"), ("chosen", chosen.trend_spec_)):
            start = time.perf_counter()
            # The fixed LightGBM: its 300 rounds, without the early-stopping search.
            Downscaler(trend=spec, early_stopping=False).fit(scene.coarse, X)
            times[trend].append(time.perf_counter() - start)
    auto, lightgbm, alone = (statistics.median(times[k]) for k in ("auto", "lightgbm", "chosen"))
    print(
        f"default scene, {repeats} repeats (median): fit auto {auto:.2f} s (chose {chosen.selected_trend_}, "
        f"weight {chosen.trend_weight_:.2f}), fit lightgbm {lightgbm:.2f} s, fit of the chosen trend alone "
        f"{alone:.2f} s"
    )
    print(f"fit-time ratio auto / lightgbm: {auto / lightgbm:.2f} (target <= 3)")
    print(f"fit-time ratio auto / the chosen trend alone (the selection's own cost): {auto / alone:.2f}")


def station_time(repeats):
    """Fit time with the scene's 40 stations: calibration only, and joining the trend when they help."""
    for variable in ("lst", "soil_moisture"):
        scene = ds.datasets.synthetic_scene(variable)
        X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
        runs = {
            "no stations": dict(),
            "stations, calibration only": dict(stations=scene.stations, station_trend=False),
            "stations (default)": dict(stations=scene.stations, station_trend="auto"),
        }
        times = {name: [] for name in runs}
        joined = None
        for _ in range(repeats):
            for name, options in runs.items():
                options = dict(options)
                station_trend = options.pop("station_trend", "auto")
                start = time.perf_counter()
                model = Downscaler(station_trend=station_trend).fit(
                    scene.coarse,
                    X,
                    mask=scene.mask,
                    station_noise="noise_std" if options else None,
                    **options,
                )
                times[name].append(time.perf_counter() - start)
                if name == "stations (default)":
                    joined = model.station_trend_
        base = statistics.median(times["no stations"])
        print(
            f"{variable}, fit of Downscaler() ({repeats} repeats, median): no stations {base:.2f} s; "
            + "; ".join(
                f"{name} {statistics.median(t):.2f} s ({statistics.median(t) / base:.2f}x)"
                for name, t in times.items()
                if name != "no stations"
            )
            + f"; the stations joined the trend: {joined}"
        )


def rmse(field, truth):
    return float(np.sqrt(np.nanmean((np.asarray(field.values) - truth.values) ** 2)))


def positive_control():
    print(
        "\npositive control: RMSE against the fine truth, default scenes (seed 0); every candidate alone on"
    )
    print(
        "the covariates the selection gives it, and (all:) on every covariate, i.e. before the retention filter"
    )
    header = (
        " ".join(f"{c:>9s}" for c in AUTO_CANDIDATES)
        + " "
        + " ".join(f"{'all:' + c:>12s}" for c in AUTO_CANDIDATES[1:])
    )
    print(f"{'scene':14s} {'chosen':>16s} {'default':>9s} {header} {'ratio':>6s} {'bilinear':>9s}")
    # Each scene with its extra covariates (NO2: emission inventory, soil moisture: 1 km LST), and soil
    # moisture once more on terrain, NDVI and location alone (the hard case).
    cases = [(v, True) for v in ("lst", "precipitation", "no2", "soil_moisture")] + [("soil_moisture", False)]
    for variable, with_extra in cases:
        scene = ds.datasets.synthetic_scene(variable, seed=0)
        extra = scene.extra if with_extra else None
        X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, extra=extra)
        mask = scene.mask if ds.datasets.VARIABLES[scene.variable]["land_only"] else None
        auto = Downscaler(calibrate_std=False).fit(scene.coarse, X, mask=mask)
        default = rmse(auto.predict(X), scene.truth)
        single, every = {}, {}
        for name in AUTO_CANDIDATES:
            used = [
                n
                for n, r in zip(auto.feature_names_, auto.retention_, strict=True)
                if r >= MIN_RETENTION[name]
            ]
            # The candidates as the selection scores them (LightGBM with its 300 rounds).
            model = Downscaler(trend=name, calibrate_std=False, early_stopping=False).fit(
                scene.coarse, X[used], mask=mask
            )
            single[name] = rmse(model.predict(X[used]), scene.truth)
            if name != "none":
                model = Downscaler(
                    trend=name, calibrate_std=False, min_retention=0, early_stopping=False
                ).fit(scene.coarse, X, mask=mask)
                every[name] = rmse(model.predict(X), scene.truth)
        bilinear = rmse(ds.grid.upsample(scene.coarse, scene.factor, "bilinear"), scene.truth)
        chosen = f"{auto.selected_trend_} ({auto.trend_weight_:.2f})"
        ratio = default / min(single.values())
        print(
            f"{variable if with_extra else 'sm, no LST':14s} {chosen:>16s} {default:9.4g} "
            + " ".join(f"{single[c]:9.4g}" for c in AUTO_CANDIDATES)
            + " "
            + " ".join(f"{every[c]:12.4g}" for c in AUTO_CANDIDATES[1:])
            + f" {ratio:6.3f} {bilinear:9.4g}",
            flush=True,
        )


def negative_control():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_selection import FACTOR, SEEDS, _bicubic, _rmse, _unrelated_scene

    print("\nnegative control: smooth random truth, unrelated covariates, 120 x 120 fine, factor 10")
    print(
        f"{'seed':>4s} {'chosen':>16s} {'default':>8s} {'atpk':>8s} {'bicubic':>8s} {'/atpk':>6s} {'/bicubic':>8s}"
    )
    ratios = []
    for seed in SEEDS:
        truth, coarse, X = _unrelated_scene(seed)
        auto = Downscaler(calibrate_std=False).fit(coarse, X)
        default = _rmse(auto.predict(X), truth)
        atpk = _rmse(Downscaler(trend="none", calibrate_std=False).fit(coarse, X).predict(X), truth)
        bicubic = _rmse(_bicubic(coarse, FACTOR), truth)
        ratios.append((default / atpk, default / bicubic))
        chosen = f"{auto.selected_trend_} ({auto.trend_weight_:.2f})"
        print(
            f"{seed:4d} {chosen:>16s} {default:8.4f} {atpk:8.4f} {bicubic:8.4f} {ratios[-1][0]:6.3f} "
            f"{ratios[-1][1]:8.3f}"
        )
    to_atpk, to_bicubic = np.array(ratios).T
    print(
        f"default / ATPK of the field: max {to_atpk.max():.3f}, median {np.median(to_atpk):.3f} (target <= 1.05); "
        f"default / bicubic: max {to_bicubic.max():.3f} (target <= 1)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--controls", action="store_true", help="also run the positive and negative controls")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    fit_time(args.repeats)
    station_time(args.repeats)
    if args.controls:
        positive_control()
        negative_control()


if __name__ == "__main__":
    main()
