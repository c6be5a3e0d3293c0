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


def plot_maps(fields, *, ncols=None, share=None, cmap="viridis", stations=None, figsize_per_panel=4.0, suptitle=None):
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
            ax.plot(stations.geometry.x / scale, stations.geometry.y / scale, "k.", markersize=3, label="stations")
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
        fig.savefig(temporary, dpi=dpi)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
        plt.close(fig)
    return path
