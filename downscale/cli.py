"""The ``downscale`` command: ``demo``, ``run``, ``validate`` and ``info``.

``main(argv=None)`` is the entry point, so tests call ``main(["demo", ...])``
on temporary folders. Progress bars and printed progress live here, never in
the library modules.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

DESCRIPTION = """\
Downscale coarse geophysical fields (about 25 km) to fine grids (250 m - 1 km)
with covariates, a machine-learning trend and area-to-point kriging, and say
how good the result is.

Start with `downscale demo`: it downscales a built-in synthetic scene and
writes a netCDF file, maps and a short report you can open.
"""


RUN_DESCRIPTION = """\
Downscale every time step of a series of coarse netCDF files, as set out in a
YAML configuration, and write one netCDF file per time step.

The configuration has the sections inputs (files, variable, time range),
covariates (DEM, NDVI, mask), model (a Downscaler fitted on every step, or a
UNet trained once on the series, or a saved model), outputs (directory, file
pattern, variables mean / std / aoa), validation (stations, optional),
calibration (stations at which the std is calibrated, optional) and dask.
data/example.yaml is a commented example; start from a copy of it.
"""

RUN_EPILOG = """\
what it writes, in outputs.directory:
  one netCDF file per time step   written to a temporary file and renamed when
                                  complete, so a file there is never half done
  run.log                         every step, failure and the summary table
  model.json or model.pt          the model used (give it as model.path to reuse)
  covariates.nc                   the fine covariates, reused by the next run
  station_scores.csv              when validation.stations is set

resuming: run the same command again. Complete outputs are checked and
skipped; missing, partial or stale ones (another model) are redone. Ctrl-C or
a SIGTERM stops the run without leaving a half-written file.

exit codes: 0 all steps done, 1 some steps failed (a bad or all-NaN input file;
see the table and run.log, the others are done), 2 the configuration or the
output directory is wrong (nothing done), 130 interrupted.

examples:
  downscale run data/example.yaml --dry-run
  downscale run data/example.yaml
  downscale run data/example.yaml --workers 2
"""


def _parser():
    parser = argparse.ArgumentParser(
        prog="downscale", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"downscale {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="downscale the built-in synthetic scene: netCDF, maps and a report",
        description="Run the whole chain on a built-in synthetic scene with known truth: covariates, "
        "trend model, area-to-point kriging of the residuals, uncertainty; then write fine.nc, "
        "maps.png and report.md into the output folder.",
    )
    demo.add_argument(
        "--variable",
        default="lst",
        choices=["lst", "precipitation", "no2", "soil_moisture"],
        help="which synthetic scene to downscale (default: lst)",
    )
    demo.add_argument(
        "--output", "-o", default="downscale_demo", help="output folder (default: ./downscale_demo)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic scene (default: 0)")
    demo.add_argument(
        "--trend",
        default=None,
        help="trend model: auto, none, linear, rf or lightgbm (default: the Downscaler's default)",
    )
    demo.add_argument(
        "--calibrate",
        default="stations",
        choices=["stations", "wald", "none"],
        help="how the std is calibrated: at every other station of the scene (the others check it; "
        "default), by the Wald protocol, or not at all",
    )

    run = commands.add_parser(
        "run",
        help="operational run over netCDF time series from a YAML configuration",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "config", metavar="CONFIG.yaml", help="the run configuration (paths in it are relative to it)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the configuration, list every time step and its output, write nothing",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="compute on a running dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 "
        "(overrides dask.scheduler)",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=None,
        help="compute on a local dask.distributed cluster of N workers, each with dask.threads threads "
        "(overrides dask.workers)",
    )

    validate = commands.add_parser(
        "validate",
        help="score a downscaled netCDF file against station measurements",
        description="Compare a prediction file with stations (CSV, GeoPackage or GeoJSON) and write "
        "a report with scores, confidence intervals and figures.",
    )
    validate.add_argument("prediction", help="downscaled netCDF file")
    validate.add_argument(
        "stations", help="stations file: CSV with x/y (or lon/lat) and value columns, GPKG or GeoJSON"
    )
    validate.add_argument(
        "--variable", default=None, help="variable in the netCDF file (default: the only one)"
    )
    validate.add_argument("--value-column", default="value", help="column of station values (default: value)")
    validate.add_argument(
        "--output", "-o", default=None, help="report folder (default: next to the prediction)"
    )
    validate.add_argument(
        "--noise",
        default=None,
        help="the stations' own error: a standard deviation (e.g. 0.5) or a column name; the interval "
        "check at the stations then allows for it",
    )

    info = commands.add_parser("info", help="describe a netCDF file: grid, CRS, times, variables")
    info.add_argument("path", help="netCDF file")
    return parser


def main(argv=None) -> int:
    """Run the ``downscale`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            from .run import run_command

            return run_command(
                args.config, dry_run=args.dry_run, scheduler=args.scheduler, workers=args.workers
            )
        if args.command == "validate":
            from .validation.report import validate_command

            return validate_command(
                args.prediction,
                args.stations,
                variable=args.variable,
                value_column=args.value_column,
                output=args.output,
                noise=args.noise,
            )
        if args.command == "info":
            print(describe_file(args.path))
            return 0
    except KeyboardInterrupt:
        print("\nInterrupted; finished outputs are kept and a rerun resumes.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, OSError) as error:
        print(f"downscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0  # pragma: no cover


def describe_file(path) -> str:
    """A short human-readable description of a netCDF file: variables, grid, CRS and times."""
    import numpy as np
    import xarray as xr

    from . import grid as grid_module

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    with xr.open_dataset(path, decode_coords="all") as data:
        lines = [f"{path}"]
        crs = grid_module.get_crs(data)
        lines.append(
            f"  CRS: {crs.to_string() if crs is not None else 'none (declare one with rio.write_crs)'}"
        )
        for axis in ("y", "x"):
            if axis in data.coords:
                values = data[axis].values
                step = (values[-1] - values[0]) / max(len(values) - 1, 1)
                lines.append(
                    f"  {axis}: {len(values)} cells from {values[0]:.6g} to {values[-1]:.6g}, step {step:.6g}"
                )
        if "time" in data.coords:
            times = data["time"].values
            lines.append(f"  time: {len(np.atleast_1d(times))} steps from {np.min(times)} to {np.max(times)}")
        lines.append("  variables:")
        for name, variable in data.data_vars.items():
            units = variable.attrs.get("units", "")
            long_name = variable.attrs.get("long_name", "")
            lines.append(f"    {name} {tuple(variable.dims)} {units} {long_name}".rstrip())
        if "history" in data.attrs:
            lines.append(f"  history: {data.attrs['history'].splitlines()[-1]}")
    return "\n".join(lines)


def _demo(args) -> int:
    import numpy as np

    import downscale as ds
    from downscale.downscaler import _wald_guard
    from downscale.validation import report as report_module

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def step(message):
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    step(f"Making the synthetic {args.variable} scene (seed {args.seed})")
    scene = ds.datasets.synthetic_scene(args.variable, seed=args.seed)
    factor = scene.factor
    step(
        f"  coarse {scene.coarse.sizes['y']} x {scene.coarse.sizes['x']} cells -> fine "
        f"{scene.truth.sizes['y']} x {scene.truth.sizes['x']} cells (factor {factor})"
    )
    step("Building covariates (terrain, NDVI, location" + "".join(f", {name}" for name in scene.extra) + ")")
    covariates = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, extra=scene.extra)
    step(f"  {len(covariates.data_vars)} covariates: {', '.join(covariates.data_vars)}")
    params = {} if args.trend is None else {"trend": args.trend}
    if args.calibrate == "none":
        params["calibrate_std"] = False
    model = ds.Downscaler(**params)
    # A land-only variable (LST, soil moisture) is downscaled on land pixels only: no values at sea.
    mask = scene.mask if ds.datasets.VARIABLES[scene.variable]["land_only"] else None
    # Calibrate the std at every other station; the report checks it at the others.
    calibration_stations, check_stations = None, scene.stations
    if args.calibrate == "stations":
        calibration_stations, check_stations = scene.stations.iloc[::2], scene.stations.iloc[1::2]
    step(f"Fitting the Downscaler ({model!r})" + (" on land pixels" if mask is not None else ""))
    model.fit(
        scene.coarse,
        covariates,
        mask=mask,
        stations=calibration_stations,
        # The scene's stations record their measurement noise: it is not the pixel's uncertainty.
        station_noise=None if calibration_stations is None else "noise_std",
    )
    chosen = getattr(model, "selected_trend_", None)
    cv_results = getattr(model, "cv_results_", None)
    if cv_results is not None:
        weight = getattr(model, "trend_weight_", 1.0)
        step(
            f"  trend chosen by spatial cross-validation: {chosen}"
            + (f" (shrunk, weight {weight:.2f})" if chosen != "none" and weight < 1 else "")
        )
        print(cv_results.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    else:
        chosen = None
    rounds = getattr(model, "n_rounds_", None)
    if rounds is not None:
        step(
            f"  LightGBM kept {rounds} of its {int(model.rounds_cv_['n_rounds'].max())} boosting rounds "
            "(early stopping on spatial folds of the "
            "coarse cells)" + (": no round beat the mean, the trend is the constant" if rounds == 0 else "")
        )
    if getattr(model, "station_cv_", None) is not None:
        rmse_without, rmse_with = model.station_cv_["station_rmse"]
        step(
            (
                f"  the {model.station_values_} calibration stations joined the trend"
                if model.station_trend_
                else "  the trend is fitted without the stations"
            )
            + f" (RMSE at held-out stations {rmse_with:.4g} with them, {rmse_without:.4g} without)"
        )
    if args.calibrate == "stations":
        step(
            f"  std calibrated at {model.std_scale_stations_} stations (factor {model.std_scale_:.2f}); "
            f"the other {len(check_stations)} check it"
        )
    elif args.calibrate == "wald":
        step(f"  std calibrated by the Wald protocol (factor {model.std_scale_:.2f}{_wald_guard(model)})")
    step("Predicting the fine field and its uncertainty")
    fine, std = model.predict(covariates, return_std=True)

    bilinear = ds.grid.upsample(scene.coarse, factor, "bilinear")
    truth = scene.truth
    valid = np.isfinite(truth.values) & np.isfinite(fine.values)

    def rmse(a):
        return float(np.sqrt(np.nanmean((a.values[valid] - truth.values[valid]) ** 2)))

    rmse_fine, rmse_bilinear = rmse(fine), rmse(bilinear)
    back = ds.grid.block_mean(fine, factor)
    cells = np.isfinite(scene.coarse.values) & np.isfinite(back.values)
    coherence = float(
        np.max(
            np.abs(back.values[cells] - scene.coarse.values[cells])
            / np.maximum(np.abs(scene.coarse.values[cells]), 1e-12)
        )
    )
    z = 1.6448536269514722
    inside = np.abs(truth.values - fine.values) <= z * std.values
    coverage = float(np.mean(inside[valid & np.isfinite(std.values)]))

    applicability = None
    shap = None
    if getattr(model, "selected_trend_", model.trend) not in ("none", None):
        try:
            step("Area of applicability and SHAP explanation of the trend")
            dissimilarity, inside, _ = ds.explain.applicability(model, covariates)
            applicability = (dissimilarity, inside)
            shap = ds.explain.shap_values(model, covariates, sample=1000)
        except (TypeError, ValueError) as error:  # e.g. a trend without tree structure
            step(f"  skipped: {error}")

    step("Writing fine.nc")
    name = fine.name or args.variable
    output_data = fine.to_dataset(name=name).assign({std.name or f"{name}_std": std})
    if applicability is not None:
        output_data = output_data.assign(dissimilarity_index=applicability[0], aoa=applicability[1])
    fine_path = ds.io.write_netcdf(
        output_data,
        output / "fine.nc",
        parameters={
            "command": "downscale demo",
            "variable": args.variable,
            "seed": args.seed,
            **model.get_params(deep=False),
        },
    )
    step("Drawing maps.png")
    figure = ds.plot.plot_maps(
        {
            "coarse input": scene.coarse,
            "downscaled": fine,
            "truth": truth,
            "uncertainty (std)": std,
        },
        share=["coarse input", "downscaled", "truth"],
        cmap={"uncertainty (std)": "magma"},
        stations=scene.stations,
        suptitle=f"{truth.attrs.get('long_name', args.variable)}: {factor}x downscaling of the synthetic scene",
    )
    maps_path = ds.plot.save_figure(figure, output / "maps.png")

    step("Scoring against the stations and writing the report")
    units = truth.attrs.get("units", "")
    notes = [
        f"Synthetic {truth.attrs.get('long_name', args.variable)} scene, seed {args.seed}: "
        f"{scene.coarse.sizes['y']} x {scene.coarse.sizes['x']} coarse cells downscaled {factor}x.",
        f"Model: `{model!r}`"
        + (f"; trend chosen by spatial cross-validation: **{chosen}**" if chosen is not None else ""),
        f"RMSE against the fine truth: downscaled {rmse_fine:.4g} {units}, bilinear interpolation "
        f"{rmse_bilinear:.4g} {units} (ratio {rmse_fine / rmse_bilinear:.3f}).",
        f"Coherence error (max relative difference of block means from the coarse input): {coherence:.2e}.",
        f"Share of truth pixels inside the nominal 90% interval: {coverage:.1%} ("
        + {
            "stations": f"std calibrated at {model.std_scale_stations_} stations, factor {model.std_scale_:.3g}; "
            f"the station scores below are of the other {len(check_stations)}",
            "wald": f"std calibrated by the Wald protocol, factor {model.std_scale_:.3g}{_wald_guard(model)}",
            "none": "std not calibrated",
        }[args.calibrate]
        + ").",
        "Maps of the coarse input, the downscaled field, the truth and the uncertainty: ![maps](maps.png)",
    ]
    report_path = report_module.write_report(
        output,
        fine,
        check_stations,
        station_noise="noise_std",
        std=std,
        aoa=None if applicability is None else applicability[1],
        dissimilarity=None if applicability is None else applicability[0],
        coarse=scene.coarse,
        truth=truth,
        shap=shap,
        model=model,
        title=f"downscale demo: {args.variable}",
        notes=notes,
    )
    step(
        f"RMSE against truth: downscaled {rmse_fine:.4g} vs bilinear {rmse_bilinear:.4g} "
        f"({rmse_fine / rmse_bilinear:.2f}x); coherence error {coherence:.1e}; 90% interval coverage {coverage:.0%}"
    )
    print(f"\nWrote:\n  {fine_path}\n  {maps_path}\n  {report_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
