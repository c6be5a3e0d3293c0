"""Validation report: station scores with intervals, figures and a Markdown page; the ``downscale validate`` command.

:func:`write_report` gathers whatever evidence there is about a downscaled
field into one folder: ``report.md``, ``scores.csv`` and PNG figures. Every
piece is optional except the prediction itself:

- stations: scores per station and overall with bootstrap intervals, a
  scatter plot, a map with the stations, and the coverage of the 90 %
  prediction intervals when a standard deviation is given;
- the radially averaged power spectrum of the prediction, set against the
  coarse input and the truth when known (hallucination check, effective
  resolution);
- a standard-deviation map, an area-of-applicability map;
- cross-validation scores (:func:`~downscale.validation.cross_validate`), the
  Wald protocol (:func:`~downscale.validation.wald_score`) and SHAP importance
  (:mod:`downscale.explain`) when the caller has a model.

:func:`validate_command` is the command line's entry: it reads a prediction
file and a station file and writes the report from what the file holds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import grid as grid_module

__all__ = ["markdown_table", "validate_command", "write_report"]

#: Two-sided 90 % normal quantile, for the coverage of prediction intervals.
_Z90 = 1.6448536269514722
_AUXILIARY_SUFFIXES = ("_std", "_cv", "_bilinear")
_AUXILIARY_NAMES = ("aoa", "dissimilarity_index", "spatial_ref", "valid_fraction", "fold")


def markdown_table(frame: pd.DataFrame, digits: int = 4, index: bool = True) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (numbers to ``digits`` significant digits).

    Examples
    --------
    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"rmse": [0.123456]}, index=pd.Index(["overall"], name="station"))))
    | station | rmse |
    |---|---|
    | overall | 0.1235 |
    """

    def cell(value, column=None):
        if column == "n" and isinstance(value, (float, np.floating)) and np.isfinite(value):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return "" if not np.isfinite(value) else f"{value:.{digits}g}"
        return str(value)

    columns = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, row in frame.iterrows():
        cells = ([cell(key)] if index else []) + [
            cell(v, c) for c, v in zip(frame.columns, row.to_numpy(), strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval_table(overall: pd.Series) -> pd.DataFrame:
    """Overall scores with their bootstrap interval as columns ``value``, ``low``, ``high``."""
    rows = {}
    for name, value in overall.items():
        name = str(name)
        if name == "n" or name.endswith(("_low", "_high")):
            continue
        rows[name] = {
            "value": float(value),
            "low": float(overall.get(f"{name}_low", np.nan)),
            "high": float(overall.get(f"{name}_high", np.nan)),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "metric"
    return table


def _grid_description(field: xr.DataArray) -> str:
    crs = grid_module.get_crs(field)
    crs_text = "no CRS"
    if crs is not None:
        epsg = crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg else crs.name
    dy = abs(grid_module.grid_step(field["y"], "y"))
    dx = abs(grid_module.grid_step(field["x"], "x"))
    unit = "degrees" if grid_module.is_geographic(field) else "m"
    text = f"{field.sizes['y']} x {field.sizes['x']} cells of {dx:g} x {dy:g} {unit}, {crs_text}"
    if "time" in field.dims:
        times = pd.to_datetime(field["time"].values)
        text += f", {field.sizes['time']} time steps ({times.min():%Y-%m-%d} to {times.max():%Y-%m-%d})"
    return text


def _figure(fig, output: Path, name: str, figures: list, caption: str):
    from ..plot import save_figure

    save_figure(fig, output / name)
    figures.append(name)
    return f"![{caption}]({name})\n"


def _selection_lines(model) -> list:
    """The "Trend selection" section for a fitted Downscaler (nothing for other models)."""
    chosen = getattr(model, "selected_trend_", None)
    if chosen is None:
        return []
    lines = ["## Trend selection", ""]
    table = getattr(model, "cv_results_", None)
    used, seen = list(getattr(model, "features_used_", [])), list(getattr(model, "feature_names_", []))
    if not (isinstance(model.trend, str) and model.trend == "auto"):
        from ..downscaler import _trend_details

        details = _trend_details(
            getattr(model, "n_rounds_", None),
            getattr(model, "trend_weight_", 1.0),
            isinstance(getattr(model, "trend_weight", None), str),
        )
        lines.append(f"Trend: **{chosen}**{details}, named by the user (no selection among trends).")
        rounds = getattr(model, "rounds_cv_", None)
        if rounds is not None:
            lines += [
                "",
                "Boosting rounds chosen by spatial cross-validation on the coarse cells (early stopping with "
                "spatial folds as the validation set; out-of-fold RMSE in the transformed space):",
                "",
                markdown_table(rounds, index=False),
            ]
        if table is not None:
            lines += [
                "",
                "Weight of the trend against the constant from the same cross-validation:",
                "",
                markdown_table(table, index=False),
            ]
    else:
        weight = getattr(model, "trend_weight_", 1.0)
        lines.append(
            f"Trend chosen by spatial cross-validation on the coarse cells and the Wald check: **{chosen}**"
            + (
                f", shrunk toward the constant with weight {weight:.2f}"
                if chosen != "none" and weight < 1
                else ""
            )
            + ". Scores are RMSE ratios to the constant trend (the larger of the CV and Wald ratios); the "
            "simplest candidate within 2 % of the best wins."
        )
        lines += ["", markdown_table(table, index=False)]
    stations = getattr(model, "station_cv_", None)
    if stations is not None:
        if getattr(model, "station_trend_", False):
            verdict = (
                f"the trend was refitted on the coarse cells and {model.station_values_} station values, "
                "which predicted held-out stations better"
            )
        else:
            verdict = "the trend is fitted on the coarse cells alone: the stations did not predict held-out stations better"
        lines += [
            "",
            f"Stations in the trend: {verdict} (RMSE at held-out stations in the field's units; they join when their drop in squared error exceeds one standard error).",
            "",
            markdown_table(stations, index=False),
        ]
    left_out = [name for name in seen if name not in used]
    if left_out:
        lines += [
            "",
            f"Covariates left out of the trend (their block means keep too little of their fine "
            f"spread): {', '.join(left_out)}.",
        ]
    return [*lines, ""]


def write_report(
    output,
    prediction: xr.DataArray,
    stations=None,
    *,
    value_column: str = "value",
    station_noise=None,
    std: xr.DataArray | None = None,
    aoa: xr.DataArray | None = None,
    dissimilarity: xr.DataArray | None = None,
    coarse: xr.DataArray | None = None,
    truth: xr.DataArray | None = None,
    cv=None,
    wald=None,
    shap=None,
    model=None,
    title: str | None = None,
    notes=(),
    n_boot: int = 1000,
) -> Path:
    """Write ``report.md``, ``scores.csv`` and PNG figures about a downscaled field into the folder ``output``.

    Parameters
    ----------
    output : str or Path
        Folder (created if needed).
    prediction : xarray.DataArray
        The downscaled field ``(y, x)`` or ``(time, y, x)``.
    stations : geopandas.GeoDataFrame, optional
        Station records (see :func:`downscale.validation.read_stations`), with ``value_column``.
    station_noise : float or str, optional
        Standard deviation of a station value's own error, a number or a column of ``stations``: the
        interval check at the stations then uses ``prediction +- 1.645 sqrt(std**2 + noise**2)``.
    std, aoa, dissimilarity : xarray.DataArray, optional
        Standard deviation of the prediction, area-of-applicability mask, dissimilarity index.
    coarse, truth : xarray.DataArray, optional
        The coarse input (GDOWN at the stations, spectrum) and the fine truth when known (spectrum,
        effective resolution, error).
    cv : CrossValidationResult or dict of str to CrossValidationResult, optional
    wald : WaldResult, optional
    shap : downscale.explain.ShapValues, optional
    model : downscale.Downscaler, optional
        The fitted model: its trend selection (``selected_trend_``, ``cv_results_``) is reported.
    title : str, optional
    notes : sequence of str
        Extra lines for the report's header (e.g. assumptions made reading the inputs).
    n_boot : int
        Bootstrap resamples for the station score intervals.

    Returns
    -------
    pathlib.Path
        The path of ``report.md``.
    """
    from .. import plot
    from .spectrum import effective_resolution, radial_power_spectrum
    from .stations import conformal_scale, extract_at_points, station_noise_values, station_scores

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    name = prediction.name or "prediction"
    figures: list[str] = []
    lines = [f"# {title or f'Validation of {name}'}", ""]
    lines.append(f"- Field: `{name}` ({plot.label_of(prediction)}), {_grid_description(prediction)}.")
    if prediction.attrs.get("downscale_method"):
        lines.append(f"- Method: {prediction.attrs['downscale_method']}.")
    lines.extend(f"- {note}" for note in notes)
    lines.append("")

    units = prediction.attrs.get("units", "")
    score_frames = []
    if stations is not None:
        lines += ["## Stations", ""]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = station_scores(prediction, stations, coarse=coarse, value=value_column, n_boot=n_boot)
        for warning in caught:
            lines.append(f"> Note: {warning.message}")
        if caught:
            lines.append("")
        overall = scores.loc["overall"]
        lines.append(
            f"{int(overall['n'])} station values at {len(scores) - 1} stations. Overall scores with 90 % "
            f"bootstrap intervals (whole stations resampled when they have several times):"
        )
        lines += ["", markdown_table(_interval_table(overall)), ""]
        score_frames.append(scores.assign(source="stations"))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported above
            predicted = extract_at_points(prediction, stations)
            series = {"downscaled": predicted}
            if coarse is not None:
                series["coarse"] = extract_at_points(coarse, stations)
            stds = extract_at_points(std, stations) if std is not None else None
        observed = pd.to_numeric(stations[value_column], errors="coerce").to_numpy(dtype=float)
        lines.append(
            _figure(
                plot.plot_station_scatter(observed, series, units=units, title=f"{name} at the stations"),
                output,
                "station_scatter.png",
                figures,
                "observed vs predicted at the stations",
            )
        )
        maps = {name: prediction}
        if std is not None:
            maps[std.name or f"{name}_std"] = std
        lines.append(
            _figure(
                plot.plot_maps(maps, share=[name], stations=stations),
                output,
                "map_stations.png",
                figures,
                "map with the stations",
            )
        )
        if stds is not None:
            noise = station_noise_values(stations, station_noise)
            ok = np.isfinite(observed) & np.isfinite(predicted) & np.isfinite(stds) & (stds > 0)
            ok &= np.isfinite(noise)
            if ok.any():
                half_width = _Z90 * np.sqrt(stds[ok] ** 2 + noise[ok] ** 2)
                inside = np.abs(observed[ok] - predicted[ok]) <= half_width
                lines.append(
                    f"Uncertainty: {inside.mean():.0%} of {ok.sum()} station values lie inside the 90 % "
                    + (
                        "prediction interval (prediction +- 1.645 std; nominal 90 %; station noise and "
                        "point-vs-pixel mismatch are not in the std)."
                        if station_noise is None
                        else "prediction interval of a station value (prediction +- 1.645 sqrt(std^2 + "
                        "noise^2), with the stations' own noise; nominal 90 %)."
                    )
                )
                try:  # too few stations for a 90 % conformal scale: say nothing more
                    scale = (
                        conformal_scale(observed, predicted, stds, 0.9, noise=noise)[0]
                        if inside.mean() < 0.8
                        else None
                    )
                except ValueError:
                    scale = None
                if scale is not None:
                    lines.append(
                        f"The intervals are too narrow here. `ds.validation.calibrate_std(prediction, std, "
                        f"stations{'' if station_noise is None else f', noise={station_noise!r}'})` scales the std so that 90 % intervals hold 90 % of the station values "
                        f"(split conformal); these stations give a factor of {scale:.2f}. Check it on "
                        f"stations kept out of the calibration."
                    )
                lines.append("")
        repeated = scores.drop(index="overall")["n"].max() > 1 if len(scores) > 1 else False
        if repeated and len(scores) <= 60:  # per-station series; single values are in the scatter plot
            lines += [
                "Per station:",
                "",
                markdown_table(scores.drop(index="overall").filter(regex="^(?!.*_(low|high)$)")),
                "",
            ]
    else:
        maps = {name: prediction}
        if std is not None:
            maps[std.name or f"{name}_std"] = std
        lines += ["## Maps", "", _figure(plot.plot_maps(maps), output, "maps.png", figures, "maps")]

    if truth is not None:
        from .crossval import score_table

        row = pd.DataFrame(
            [score_table(truth.values, prediction.values)], index=pd.Index(["truth"], name="against")
        )
        lines += ["## Error against the truth", "", markdown_table(row), ""]
        score_frames.append(row.assign(source="truth"))

    # Spectra: the hallucination check.
    lines += ["## Power spectrum", ""]
    spectra_fields = {"downscaled": prediction}
    if coarse is not None:
        spectra_fields["coarse input"] = coarse
    if truth is not None:
        spectra_fields["truth"] = truth
    try:
        spectra = {label: radial_power_spectrum(field) for label, field in spectra_fields.items()}
    except ValueError as error:
        lines += [f"No spectrum: {error}", ""]
    else:
        lines.append(
            _figure(
                plot.plot_spectra(spectra), output, "spectrum.png", figures, "radially averaged power spectra"
            )
        )
        if truth is not None:
            resolution = effective_resolution(prediction, truth)
            k_pred, p_pred = spectra["downscaled"]
            k_true, p_true = spectra["truth"]
            top = k_pred > 0.5 * k_pred.max()
            ratio = float(np.mean(p_pred[top]) / np.mean(np.interp(k_pred[top], k_true, p_true)))
            lines.append(
                f"Effective resolution against the truth: {resolution / 1000:.3g} km (the wavelength below which "
                f"less than half the truth's power is kept). Power at the finest scales (upper half of the "
                f"wavenumbers) is {ratio:.2f} x the truth's: above 1 means invented detail, well below 1 smoothing."
            )
        else:
            lines.append(
                "Without fine truth the spectrum shows where the field's variance sits; power at the finest "
                "scales far above the coarse input's trend would be invented detail."
            )
        lines.append("")

    if aoa is not None or dissimilarity is not None:
        lines += ["## Area of applicability", ""]
        if aoa is not None:
            inside = np.asarray(aoa.values, dtype=bool)
            lines.append(
                f"{inside.mean():.1%} of the pixels lie inside the area of applicability of the trend model."
            )
        lines.append(
            _figure(
                plot.plot_aoa(
                    dissimilarity if dissimilarity is not None else aoa.astype(float), aoa, stations=stations
                ),
                output,
                "aoa.png",
                figures,
                "area of applicability",
            )
        )

    lines += _selection_lines(model)

    if cv is not None:
        results = cv if isinstance(cv, dict) else {"cross-validation": cv}
        lines += ["## Cross-validation at the coarse scale", ""]
        lines.append(
            "Coarse cells held out fold by fold, predicted from the others, scored on the block means of the "
            "fine prediction. Random folds keep neighbours in training and overstate skill; spatial blocks do not."
        )
        summary = pd.DataFrame({label: r.scores for label, r in results.items()}).T
        summary.index.name = "cv"
        lines += ["", markdown_table(summary), ""]
        lines.append(
            _figure(plot.plot_cv_scores(results, units=units), output, "cv_scores.png", figures, "CV scores")
        )
        score_frames.append(summary.assign(source="cross-validation"))

    if wald is not None:
        lines += ["## Wald protocol", ""]
        lines.append(
            f"The coarse field degraded {wald.factor} x and downscaled back, scored against the coarse field "
            f"(no fine truth needed). Gain in RMSE over bilinear interpolation: {wald.gain:.1%}."
        )
        lines += ["", markdown_table(wald.scores), ""]
        score_frames.append(wald.scores.assign(source="wald"))

    if shap is not None:
        from ..explain import global_importance

        importance = global_importance(shap)
        lines += ["## Covariate importance (SHAP)", ""]
        space = "" if shap.space in ("none", "identity") else f" (in the model's {shap.space} space)"
        lines.append(
            f"Mean absolute SHAP value of each covariate in the trend, on {len(shap.values)} pixels{space}."
        )
        lines += ["", markdown_table(importance.head(15)), ""]
        lines.append(
            _figure(plot.plot_shap_summary(shap), output, "shap_summary.png", figures, "SHAP summary")
        )
        top = importance.index[0]
        lines.append(
            _figure(
                plot.plot_shap_dependence(shap, top),
                output,
                "shap_dependence.png",
                figures,
                "SHAP dependence",
            )
        )

    if score_frames:
        pd.concat(score_frames).to_csv(output / "scores.csv")
    path = output / "report.md"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def _pick_variable(data: xr.Dataset, variable, path):
    grid_vars = [str(n) for n, da in data.data_vars.items() if {"y", "x"} <= set(da.dims)]
    if variable is not None:
        if variable not in data.data_vars:
            raise ValueError(
                f"{path} has no variable {variable!r}; it has {sorted(grid_vars)}. Pass --variable NAME."
            )
        return variable
    candidates = [n for n in grid_vars if not n.endswith(_AUXILIARY_SUFFIXES) and n not in _AUXILIARY_NAMES]
    if len(candidates) != 1:
        raise ValueError(
            f"{path} has {len(candidates)} candidate prediction variables {candidates}; choose one with "
            f"--variable NAME."
        )
    return candidates[0]


def validate_command(
    prediction, stations, variable=None, value_column: str = "value", output=None, noise=None
) -> int:
    """``downscale validate PRED.nc STATIONS``: score a prediction file against stations and write a report.

    Parameters
    ----------
    prediction : str or Path
        A netCDF file with the downscaled field (and optionally ``<name>_std``, ``aoa``,
        ``dissimilarity_index``).
    stations : str or Path
        Station file (CSV, GeoPackage, GeoJSON; see :func:`downscale.validation.read_stations`). CSV
        coordinates named x/y without a declared CRS are taken in the prediction's CRS.
    variable : str, optional
        The variable to validate (default: the only grid variable that is not a std, AOA or mask).
    value_column : str
        Column of the station observations.
    output : str or Path, optional
        Report folder; default ``<prediction stem>_validation`` next to the prediction file.
    noise : float or str, optional
        The stations' own error (a standard deviation, or the name of a column with one per value):
        the interval check then allows for it (see :func:`write_report`).

    Returns
    -------
    int
        0 on success (errors raise, and the command line turns them into exit code 2).
    """
    from ..io import read_netcdf
    from .stations import read_stations

    prediction = Path(prediction)
    data = read_netcdf(prediction, require_crs=False)
    if isinstance(data, xr.DataArray):
        data = data.to_dataset(name=data.name or "prediction")
    name = _pick_variable(data, variable, prediction)
    field = data[name]
    std = data.get(f"{name}_std")
    aoa = data.get("aoa")
    dissimilarity = data.get("dissimilarity_index")

    notes = [f"Prediction file: `{prediction}`; stations: `{stations}`."]
    table = read_stations(stations)
    if value_column not in table.columns:
        raise ValueError(
            f"The stations file {stations} has no column {value_column!r}; its columns are "
            f"{[c for c in table.columns if c != 'geometry']}. Pass --value-column NAME."
        )
    if isinstance(noise, str) and noise not in table.columns:
        try:
            noise = float(noise)
        except ValueError:
            raise ValueError(
                f"--noise {noise!r} is neither a number nor a column of {Path(stations).name} (its columns "
                f"are {[c for c in table.columns if c != 'geometry']}). Give the stations' error as a "
                f"standard deviation (e.g. --noise 0.5) or name its column."
            ) from None
    grid_crs = grid_module.get_crs(field)
    if table.crs is None and grid_crs is not None:
        table = table.set_crs(grid_crs)
        message = (
            f"The station coordinates in {Path(stations).name} have no CRS; they are taken in the prediction's "
            f"CRS ({grid_crs.to_string()}). Name the columns lon/lat for geographic coordinates."
        )
        warnings.warn(message, stacklevel=2)
        notes.append(message)

    output = Path(output) if output is not None else prediction.with_name(f"{prediction.stem}_validation")
    path = write_report(
        output,
        field,
        table,
        value_column=value_column,
        station_noise=noise,
        std=std,
        aoa=aoa.astype(bool) if aoa is not None else None,
        dissimilarity=dissimilarity,
        notes=notes,
    )
    scores = pd.read_csv(output / "scores.csv", index_col=0)
    overall = scores[scores["source"] == "stations"].loc["overall"]
    print(
        f"{name}: {int(overall['n'])} station values, RMSE {overall['rmse']:.4g}, bias {overall['bias']:.4g}, "
        f"r {overall['r']:.3g}, KGE {overall['kge']:.3g}"
    )
    print(f"Report written to {path}")
    return 0
