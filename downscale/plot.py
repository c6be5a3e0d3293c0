"""Figures: maps of fields side by side, station scatter plots, spectra and score charts.

Every map has axes in kilometres (or degrees on geographic grids), a title,
and a colour bar labelled with the variable's long name and units. Functions
return the :class:`matplotlib.figure.Figure` so callers can save or adjust it.
"""

from __future__ import annotations

import numpy as np

from . import grid as grid_module

__all__ = ["label_of", "plot_maps", "plot_station_scatter", "plot_spectra", "save_figure"]


def label_of(da, fallback: str = "value") -> str:
    """Colour-bar label of a DataArray: ``"long name [units]"``.

    Examples
    --------
    >>> import xarray as xr
    >>> label_of(xr.DataArray(0.0, attrs={"long_name": "land surface temperature", "units": "K"}))
    'land surface temperature [K]'
    """
    name = da.attrs.get("long_name") or da.attrs.get("standard_name") or da.name or fallback
    units = da.attrs.get("units")
    return f"{name} [{units}]" if units else str(name)


def _axis_scale(da):
    """Coordinates for plotting and their axis labels (km on projected grids, degrees on geographic)."""
    if grid_module.is_geographic(da):
        return da.x.values, da.y.values, "longitude [degrees east]", "latitude [degrees north]"
    return da.x.values / 1000.0, da.y.values / 1000.0, "easting [km]", "northing [km]"


def _extent(x, y):
    half_x = abs(x[-1] - x[0]) / max(len(x) - 1, 1) / 2
    half_y = abs(y[-1] - y[0]) / max(len(y) - 1, 1) / 2
    return [min(x) - half_x, max(x) + half_x, min(y) - half_y, max(y) + half_y]


def plot_maps(
    fields, *, ncols=None, share=None, cmap="viridis", stations=None, figsize_per_panel=4.0, suptitle=None
):
    """Plot several fields side by side, each with labelled axes and a colour bar.

    Parameters
    ----------
    fields : dict of str to xarray.DataArray
        Panel title -> 2-D field ``(y, x)``. A field with a ``time`` dim shows its first step.
    ncols : int, optional
        Panels per row (default: all in one row up to 4).
    share : list of str, optional
        Titles of panels that share one colour range (e.g. coarse, downscaled, truth).
    cmap : str or dict
        Colour map, or one per title.
    stations : geopandas.GeoDataFrame, optional
        Drawn as black dots on every panel that shares the colour range.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", shape=(100, 100), factor=10)
    >>> fig = ds.plot.plot_maps({"coarse": scene.coarse, "truth": scene.truth}, share=["coarse", "truth"])
    >>> len(fig.axes)   # two maps and their colour bars
    4
    """
    import matplotlib.pyplot as plt

    titles = list(fields)
    n = len(titles)
    ncols = ncols or min(n, 4)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(figsize_per_panel * ncols * 1.3, figsize_per_panel * nrows), squeeze=False
    )
    share = set(share or [])
    shared_values = [
        np.asarray(_first_step(fields[t]).values, dtype=float).ravel() for t in titles if t in share
    ]
    shared_range = None
    if shared_values:
        values = np.concatenate(shared_values)
        values = values[np.isfinite(values)]
        if values.size:
            shared_range = tuple(np.percentile(values, [1, 99]))
    for index, title in enumerate(titles):
        ax = axes.flat[index]
        da = _first_step(fields[title])
        x, y, xlabel, ylabel = _axis_scale(da)
        colour_map = cmap.get(title, "viridis") if isinstance(cmap, dict) else cmap
        vmin, vmax = shared_range if (title in share and shared_range) else (None, None)
        image = ax.imshow(
            np.asarray(da.transpose("y", "x").values, dtype=float),
            extent=_extent(x, y),
            origin="upper" if y[0] > y[-1] else "lower",
            cmap=colour_map,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.colorbar(image, ax=ax, shrink=0.8, label=label_of(da))
        if stations is not None and title in share and len(stations):
            scale = 1.0 if grid_module.is_geographic(da) else 1000.0
            ax.plot(
                stations.geometry.x / scale, stations.geometry.y / scale, "k.", markersize=3, label="stations"
            )
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _first_step(da):
    return da.isel(time=0) if "time" in da.dims else da


def plot_station_scatter(observed, predicted, *, labels=None, units="", title="Stations"):
    """Scatter of station observations against one or more predictions, with the 1:1 line.

    Parameters
    ----------
    observed : array-like
    predicted : array-like or dict of str to array-like
        One prediction, or several labelled ones (e.g. downscaled and coarse).
    units : str
        Units for the axis labels.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_station_scatter([1, 2, 3], {"downscaled": [1.1, 2.0, 2.8]}, units="K")
    >>> fig.axes[0].get_xlabel()
    'observed [K]'
    """
    import matplotlib.pyplot as plt

    observed = np.asarray(observed, dtype=float)
    series = predicted if isinstance(predicted, dict) else {"predicted": predicted}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    all_values = [observed]
    for name, values in series.items():
        values = np.asarray(values, dtype=float)
        ok = np.isfinite(observed) & np.isfinite(values)
        rmse = float(np.sqrt(np.mean((values[ok] - observed[ok]) ** 2))) if ok.any() else np.nan
        ax.scatter(observed, values, s=14, alpha=0.75, label=f"{name} (RMSE {rmse:.3g})")
        all_values.append(values)
    stacked = np.concatenate(all_values)
    stacked = stacked[np.isfinite(stacked)]
    if stacked.size:
        low, high = stacked.min(), stacked.max()
        ax.plot([low, high], [low, high], "k--", linewidth=1, label="1:1")
    suffix = f" [{units}]" if units else ""
    ax.set_xlabel(f"observed{suffix}")
    ax.set_ylabel(f"predicted{suffix}")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_spectra(spectra, *, title="Radially averaged power spectrum"):
    """Log-log plot of power spectra: ``spectra`` maps a label to ``(wavenumber [cycles/m], power)``.

    Examples
    --------
    >>> import numpy as np
    >>> k = np.linspace(1e-5, 5e-4, 20)
    >>> fig = plot_spectra({"truth": (k, k**-2.0)})
    >>> fig.axes[0].get_xscale()
    'log'
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (wavenumber, power) in spectra.items():
        wavenumber = np.asarray(wavenumber, dtype=float)
        power = np.asarray(power, dtype=float)
        keep = (wavenumber > 0) & (power > 0)
        ax.loglog(wavenumber[keep] * 1000.0, power[keep], label=label)
    ax.set_xlabel("wavenumber [cycles per km]")
    ax.set_ylabel("power spectral density")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def save_figure(fig, path, dpi=110):
    """Save a figure atomically (temporary file, then rename) and close it. Returns the path."""
    import os
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=dpi, bbox_inches="tight")  # long colour-bar labels stay inside
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
        plt.close(fig)
    return path


def plot_cv_scores(results, metric: str = "rmse", *, units: str = "", title=None):
    """Bar chart of a cross-validation score per fold, with the pooled score as a line, for one or more CVs.

    Parameters
    ----------
    results : CrossValidationResult or dict of str to CrossValidationResult
        From :func:`downscale.validation.cross_validate`; several labelled ones (e.g. spatial and
        random folds) are drawn side by side.
    metric : str
        A column of ``fold_scores`` (``rmse``, ``mae``, ``bias``, ``r``, ``kge``, ...).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> from types import SimpleNamespace
    >>> cv = SimpleNamespace(fold_scores=pd.DataFrame({"rmse": [1.0, 2.0]}), scores=pd.Series({"rmse": 1.6}))
    >>> fig = plot_cv_scores({"spatial": cv}, units="K")
    >>> fig.axes[0].get_ylabel()
    'rmse [K]'
    """
    import matplotlib.pyplot as plt

    series = results if isinstance(results, dict) else {"cross-validation": results}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    width = 0.8 / max(len(series), 1)
    for index, (label, result) in enumerate(series.items()):
        values = np.asarray(result.fold_scores[metric], dtype=float)
        positions = np.arange(values.size) + (index - (len(series) - 1) / 2) * width
        bars = ax.bar(positions, values, width=width, alpha=0.8, label=f"{label}: folds")
        pooled = float(result.scores[metric])
        ax.axhline(
            pooled,
            color=bars.patches[0].get_facecolor(),
            linestyle="--",
            linewidth=1.2,
            label=f"{label}: all folds {pooled:.3g}",
        )
    n_folds = max(len(r.fold_scores) for r in series.values())
    ax.set_xticks(np.arange(n_folds))
    ax.set_xticklabels([str(i) for i in range(n_folds)])
    ax.set_xlabel("fold")
    ax.set_ylabel(f"{metric} [{units}]" if units else metric)
    ax.set_title(title or f"Cross-validation {metric} at the coarse scale")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_shap_summary(explained, kind: str = "beeswarm", max_features: int = 12, *, title=None):
    """SHAP summary of the trend: mean |SHAP| bars, or a beeswarm coloured by the covariate's value.

    Parameters
    ----------
    explained : downscale.explain.ShapValues
    kind : {"beeswarm", "bar"}
    max_features : int
        The most important covariates shown, largest at the top.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from downscale.explain import ShapValues
    >>> data = pd.DataFrame({"elevation": np.arange(5.0), "ndvi": np.ones(5)})
    >>> fig = plot_shap_summary(ShapValues(values=-2 * data, data=data, base_value=300.0), kind="bar")
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['ndvi', 'elevation']
    """
    import matplotlib.pyplot as plt

    if kind not in ("beeswarm", "bar"):
        raise ValueError(f"kind must be 'beeswarm' or 'bar', got {kind!r}.")
    magnitude = explained.values.abs().mean().sort_values(ascending=False)
    names = list(magnitude.index[:max_features])[::-1]  # largest at the top
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.35 * len(names)))
    space = (
        f" ({explained.space} space)"
        if getattr(explained, "space", "none") not in ("none", "identity")
        else ""
    )
    if kind == "bar":
        ax.barh(np.arange(len(names)), magnitude[names].to_numpy(), color="tab:blue")
        ax.set_xlabel(f"mean |SHAP value|{space}")
    else:
        rng = np.random.default_rng(0)
        for row, name in enumerate(names):
            shap_column = explained.values[name].to_numpy()
            feature = explained.data[name].to_numpy(dtype=float)
            low, high = np.nanpercentile(feature, [5, 95]) if np.isfinite(feature).any() else (0.0, 1.0)
            colour = (
                np.clip((feature - low) / (high - low), 0, 1) if high > low else np.full(feature.size, 0.5)
            )
            jitter = rng.uniform(-0.3, 0.3, shap_column.size)
            points = ax.scatter(
                shap_column, row + jitter, c=colour, cmap="coolwarm", s=4, vmin=0, vmax=1, rasterized=True
            )
        colour_bar = fig.colorbar(points, ax=ax, ticks=[0, 1], aspect=30)
        colour_bar.ax.set_yticklabels(["low", "high"])
        colour_bar.set_label("covariate value")
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel(f"SHAP value (contribution to the trend){space}")
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names)
    ax.set_title(title or "Covariate importance of the trend (SHAP)")
    fig.tight_layout()
    return fig


def plot_shap_dependence(explained, feature: str, color_by=None, *, title=None):
    """SHAP dependence plot: a covariate's value against its contribution, optionally coloured by another.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from downscale.explain import ShapValues
    >>> data = pd.DataFrame({"elevation": np.arange(5.0), "ndvi": np.ones(5)})
    >>> fig = plot_shap_dependence(ShapValues(values=-2 * data, data=data, base_value=0.0), "elevation")
    >>> fig.axes[0].get_xlabel()
    'elevation'
    """
    import matplotlib.pyplot as plt

    if feature not in explained.values.columns:
        raise ValueError(f"No covariate {feature!r}; the SHAP values have {list(explained.values.columns)}.")
    fig, ax = plt.subplots(figsize=(5, 4))
    x = explained.data[feature].to_numpy(dtype=float)
    y = explained.values[feature].to_numpy(dtype=float)
    if color_by is not None:
        if color_by not in explained.data.columns:
            raise ValueError(
                f"No covariate {color_by!r} to colour by; they are {list(explained.data.columns)}."
            )
        points = ax.scatter(x, y, c=explained.data[color_by].to_numpy(dtype=float), cmap="coolwarm", s=6)
        fig.colorbar(points, ax=ax, label=color_by)
    else:
        ax.scatter(x, y, s=6, alpha=0.6)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(feature)
    ax.set_ylabel(f"SHAP value of {feature}")
    ax.set_title(title or f"SHAP dependence: {feature}")
    fig.tight_layout()
    return fig


def plot_aoa(dissimilarity, inside=None, *, stations=None, title="Area of applicability"):
    """Map of the dissimilarity index with the outside of the area of applicability hatched (or an AOA mask).

    Parameters
    ----------
    dissimilarity : xarray.DataArray
        Dissimilarity index (or, alone, a 0/1 AOA mask) on a grid.
    inside : xarray.DataArray of bool, optional
        The AOA mask; pixels outside are overlaid in grey.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((4, 4), 1000.0)
    >>> di = xr.DataArray(np.arange(16.0).reshape(4, 4) / 8, dims=("y", "x"), coords=g.coords)
    >>> fig = plot_aoa(di, di < 1)
    >>> fig.axes[0].get_title()
    'Area of applicability'
    """
    import matplotlib.pyplot as plt

    da = _first_step(dissimilarity)
    x, y, xlabel, ylabel = _axis_scale(da)
    extent = _extent(x, y)
    origin = "upper" if y[0] > y[-1] else "lower"
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(
        np.asarray(da.transpose("y", "x").values, dtype=float),
        extent=extent,
        origin=origin,
        cmap="magma_r",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label=label_of(da, "dissimilarity index"))
    if inside is not None:
        outside = ~np.asarray(_first_step(inside).transpose("y", "x").values, dtype=bool)
        overlay = np.where(outside, 1.0, np.nan)
        ax.imshow(
            overlay,
            extent=extent,
            origin=origin,
            cmap="Greys",
            vmin=0,
            vmax=1.5,
            alpha=0.55,
            interpolation="nearest",
        )
        ax.text(
            0.01,
            0.01,
            f"grey: outside ({outside.mean():.0%} of pixels)",
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
        )
    if stations is not None and len(stations):
        scale = 1.0 if grid_module.is_geographic(da) else 1000.0
        ax.plot(stations.geometry.x / scale, stations.geometry.y / scale, "c.", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


__all__ += ["plot_aoa", "plot_cv_scores", "plot_shap_dependence", "plot_shap_summary"]
