"""In-situ stations: read them, place them on the grid, match times, sample predictions and score them.

Stations are a :class:`geopandas.GeoDataFrame` of points with a CRS, a value
column (``value`` by default), an optional ``time`` column and an optional
``station_id``. They are reprojected to the grid's CRS before sampling.

Errors and warnings on bad input (pinned by the tests):

- stations without a CRS on a grid that has one: ``ValueError`` (declare it);
- some stations outside the grid: ``UserWarning``, their values are NaN;
  all of them outside: ``ValueError`` (usually a CRS mix-up);
- station records without a matching time step: ``UserWarning``, dropped;
  no time overlap at all: ``ValueError`` giving both time ranges.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import metrics

__all__ = [
    "calibrate_std",
    "conformal_scale",
    "extract_at_points",
    "match_times",
    "read_stations",
    "station_noise_values",
    "station_scores",
]

_X_NAMES = ("x", "easting", "lon", "longitude", "long", "lng")
_Y_NAMES = ("y", "northing", "lat", "latitude")
_GEOGRAPHIC_NAMES = {"lon", "longitude", "long", "lng", "lat", "latitude"}
_TIME_NAMES = ("time", "date", "datetime", "timestamp")
_ID_NAMES = ("station_id", "station", "id", "site", "name")

#: Columns of :func:`station_scores` and the metric function behind each.
SCORES = {
    "rmse": metrics.rmse,
    "mae": metrics.mae,
    "bias": metrics.bias,
    "r": metrics.pearson_r,
    "ubrmse": metrics.ubrmse,
    "kge": metrics.kge,
    "nse": metrics.nse,
}


def _find_column(columns, wanted, candidates, what, path):
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{path} has no column {wanted!r} for {what}; its columns are {list(columns)}.")
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    return None


def read_stations(path, crs=None, x=None, y=None, time=None, station_id=None):
    """Read station records from CSV, GeoPackage or GeoJSON (anything :func:`geopandas.read_file` reads).

    Parameters
    ----------
    path : str or Path
    crs : optional
        CRS of the coordinates when the file does not declare one (CSV). For
        a CSV whose coordinate columns are named lon/lat (longitude/latitude)
        it defaults to EPSG:4326; with x/y (easting/northing) columns and no
        ``crs`` the stations have no CRS and sampling a grid that has one
        raises an error. A file that declares a different CRS is an error.
    x, y : str, optional
        Coordinate columns of a CSV; guessed (case-insensitive) from
        ``x/easting/lon/longitude`` and ``y/northing/lat/latitude``.
    time : str, optional
        Time column, guessed from ``time/date/datetime/timestamp``; renamed
        ``time`` and parsed as datetimes (time zones converted to naive UTC).
    station_id : str, optional
        Identifier column, guessed from ``station_id/station/id/site/name``
        and renamed ``station_id``. Without one, each distinct location gets
        an identifier ``S000``, ``S001``, ...

    Returns
    -------
    geopandas.GeoDataFrame

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "stations.csv")
    >>> _ = open(path, "w").write("name,lon,lat,value\\nA,7.1,45.2,290.5\\nB,7.3,45.4,288.0\\n")
    >>> stations = read_stations(path)
    >>> stations.crs.to_epsg(), stations["station_id"].tolist()
    (4326, ['A', 'B'])
    """
    import geopandas as gpd
    import pyproj

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Station file not found: {path}")
    if path.suffix.lower() in (".csv", ".txt", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        x_col = _find_column(table.columns, x, _X_NAMES, "x", path)
        y_col = _find_column(table.columns, y, _Y_NAMES, "y", path)
        if x_col is None or y_col is None:
            raise ValueError(
                f"Cannot find the coordinate columns of {path}: its columns are {list(table.columns)}. "
                f"Name them x/y or lon/lat, or pass read_stations(path, x='...', y='...')."
            )
        if crs is None and {str(x_col).lower(), str(y_col).lower()} <= _GEOGRAPHIC_NAMES:
            crs = "EPSG:4326"
        stations = gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(table[x_col], table[y_col]), crs=crs)
    else:
        stations = gpd.read_file(path)
        if crs is not None:
            declared = pyproj.CRS.from_user_input(crs)
            if stations.crs is None:
                stations = stations.set_crs(declared)
            elif not stations.crs.equals(declared):
                raise ValueError(
                    f"{path} declares the CRS {stations.crs.to_string()}, but crs={crs!r} was passed. "
                    f"Drop the crs argument, or reproject afterwards with `stations.to_crs(...)`."
                )
        if len(stations) and not (stations.geometry.geom_type == "Point").all():
            raise ValueError(f"{path} must hold points; it has {sorted(set(stations.geometry.geom_type))}.")
    time_col = _find_column(stations.columns, time, _TIME_NAMES, "time", path)
    if time_col is not None:
        try:
            times = pd.to_datetime(stations[time_col])
        except (ValueError, TypeError):  # e.g. dates with and without a time of day in one column
            times = pd.to_datetime(stations[time_col], format="mixed")
        if getattr(times.dt, "tz", None) is not None:
            times = times.dt.tz_convert("UTC").dt.tz_localize(None)
        stations = stations.drop(columns=[time_col]).assign(time=times.to_numpy())
    id_col = _find_column(stations.columns, station_id, _ID_NAMES, "station_id", path)
    if id_col is not None:
        stations = stations.rename(columns={id_col: "station_id"})
    else:
        stations["station_id"] = _location_ids(stations)
    return stations


def _location_ids(stations):
    coords = np.column_stack([stations.geometry.x.to_numpy(), stations.geometry.y.to_numpy()])
    _, inverse = np.unique(coords, axis=0, return_inverse=True)
    return np.array([f"S{i:03d}" for i in inverse.ravel()], dtype=object)


def _check_value_column(stations, value, fix="Pass value='<column name>'."):
    """The error every station function gives when the observation column ``value`` is missing."""
    if value not in stations.columns:
        raise ValueError(
            f"The stations have no column {value!r} for the observations; their columns are "
            f"{[c for c in stations.columns if c != 'geometry']}. {fix}"
        )


def _station_ids(stations):
    if "station_id" in stations.columns:
        return stations["station_id"].astype(str).to_numpy()
    return _location_ids(stations)


def _to_grid_crs(stations, field):
    """Reproject the stations to the field's CRS; refuse stations without a CRS on a grid with one."""
    from ..grid import get_crs

    if not hasattr(stations, "geometry"):
        raise TypeError(
            f"stations must be a GeoDataFrame of points, got {type(stations).__name__}. "
            f"Read them with `downscale.validation.read_stations(path)`."
        )
    grid_crs = get_crs(field)
    if stations.crs is None and grid_crs is not None:
        epsg = grid_crs.to_epsg()
        raise ValueError(
            f"The stations have no CRS, so they cannot be placed on the grid (CRS "
            f"{f'EPSG:{epsg}' if epsg else grid_crs.name}). Declare it: "
            f"`read_stations(path, crs='EPSG:4326')` or `stations.set_crs('EPSG:...')`."
        )
    if stations.crs is not None and grid_crs is None:
        warnings.warn(
            f"The grid has no CRS; the stations' coordinates ({stations.crs.to_string()}) are assumed to be "
            f"in the grid's units. Declare the grid's CRS with `downscale.grid.set_crs`.",
            stacklevel=3,
        )
        return stations
    if stations.crs is not None and not stations.crs.equals(grid_crs):
        return stations.to_crs(grid_crs)
    return stations


def _default_tolerance(times):
    if times.size < 2:
        return np.timedelta64(12, "h")
    step = np.median(np.diff(np.sort(times)))
    return step / 2


def _time_indices(field, stations, tolerance, stacklevel=3):
    """Index of the field's time step matching each station record (-1 where none matches).

    A field without a time axis matches every record (None), unless it carries a scalar datetime
    ``time`` coordinate (one step selected from a series, e.g. ``pred.isel(time=0)``) and the
    stations have times: that step is then matched like a one-step axis.
    """
    if "time" not in field.dims:
        scalar = field.coords.get("time")
        if (
            scalar is None
            or scalar.size != 1
            or "time" not in stations.columns
            or not np.issubdtype(scalar.dtype, np.datetime64)
        ):
            return None
    field_times = np.atleast_1d(np.asarray(field["time"].values))
    if "time" not in stations.columns:
        if field_times.size == 1:
            return np.zeros(len(stations), dtype=np.int64)
        raise ValueError(
            f"The prediction has {field_times.size} time steps but the stations have no 'time' column. "
            f"Add one, or select a time step first, e.g. `pred.isel(time=0)`."
        )
    station_times = pd.to_datetime(stations["time"]).to_numpy()
    tolerance = (
        _default_tolerance(field_times) if tolerance is None else pd.to_timedelta(tolerance).to_numpy()
    )
    order = np.argsort(field_times)
    sorted_times = field_times[order]
    pos = np.searchsorted(sorted_times, station_times)
    low = np.clip(pos - 1, 0, sorted_times.size - 1)
    high = np.clip(pos, 0, sorted_times.size - 1)
    gap_low = np.abs(station_times - sorted_times[low])
    gap_high = np.abs(sorted_times[high] - station_times)
    nearest = np.where(gap_high < gap_low, high, low)
    gap = np.minimum(gap_low, gap_high)
    matched = (gap <= tolerance) & ~pd.isna(station_times)
    index = np.where(matched, order[nearest], -1)
    if not matched.any():
        raise ValueError(
            f"No time overlap between the stations ({pd.Timestamp(np.nanmin(station_times))} to "
            f"{pd.Timestamp(np.nanmax(station_times))}) and the prediction ({pd.Timestamp(sorted_times[0])} to "
            f"{pd.Timestamp(sorted_times[-1])}) within a tolerance of {pd.Timedelta(tolerance)}. "
            f"Check the dates, or widen the window with tolerance='1D'."
        )
    if not matched.all():
        warnings.warn(
            f"{int((~matched).sum())} of {matched.size} station records have no prediction time step within "
            f"{pd.Timedelta(tolerance)}; they are left out.",
            stacklevel=stacklevel,
        )
    return index


def match_times(field, stations, tolerance=None):
    """Keep the station records that match a time step of ``field``, with that step in a column ``field_time``.

    Each record is matched to the nearest time step of the field within
    ``tolerance``: by default half the median time step of the field (12
    hours when it has a single time step). A field without a ``time``
    dimension matches every record, unless it keeps a scalar ``time``
    coordinate (one step of a series, e.g. ``field.isel(time=0)``): then only
    the records of that step match.

    Raises
    ------
    ValueError
        When no record matches (no time overlap), or when the field has several
        time steps and the stations have no ``time`` column.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr, geopandas as gpd
    >>> field = xr.DataArray(np.zeros((2, 2, 2)), dims=("time", "y", "x"),
    ...     coords={"time": pd.to_datetime(["2020-01-01", "2020-01-02"]), "y": [1.0, 0.0], "x": [0.0, 1.0]})
    >>> stations = gpd.GeoDataFrame({"time": pd.to_datetime(["2020-01-02 03:00"]), "value": [1.0]},
    ...     geometry=gpd.points_from_xy([0.0], [0.0]))
    >>> str(match_times(field, stations)["field_time"].iloc[0])
    '2020-01-02 00:00:00'
    """
    index = _time_indices(field, stations, tolerance)
    if index is None:
        return stations.copy()
    keep = index >= 0
    out = stations.loc[keep].copy()
    out["field_time"] = np.atleast_1d(np.asarray(field["time"].values))[index[keep]]
    return out


def _axis_positions(coord, values):
    """Fractional cell index of each value along a regular coordinate, and whether it is inside the grid."""
    from ..grid import grid_step

    step = grid_step(coord)
    position = (values - float(coord[0])) / step
    inside = (position >= -0.5) & (position <= len(coord) - 0.5)
    return position, inside


def _grid_positions(stations, field):
    """The stations in the grid's CRS, their fractional ``row`` / ``col`` on its cells, and which lie inside."""
    stations = _to_grid_crs(stations, field)
    px = stations.geometry.x.to_numpy(dtype=np.float64)
    py = stations.geometry.y.to_numpy(dtype=np.float64)
    col, inside_x = _axis_positions(field["x"].values.astype(np.float64), px)
    row, inside_y = _axis_positions(field["y"].values.astype(np.float64), py)
    return stations, row, col, inside_x & inside_y


def _nearest_cells(row, col, shape):
    """Integer cell indices of fractional positions (clipped to a grid of ``shape`` = (ny, nx))."""
    ny, nx = shape
    i = np.clip(np.round(row), 0, ny - 1).astype(np.int64)
    j = np.clip(np.round(col), 0, nx - 1).astype(np.int64)
    return i, j


def _sample(field, stations, method, tolerance, stacklevel=3):
    """Values of ``field`` at the station records (NaN outside the grid or without a matching time)."""
    from ..grid import check_grid

    if method not in ("nearest", "bilinear"):
        raise ValueError(f"method must be 'nearest' or 'bilinear', got {method!r}.")
    if not isinstance(field, xr.DataArray):
        raise TypeError(
            f"field must be an xarray DataArray with dims (y, x) or (time, y, x), got {type(field).__name__}. "
            f"Select one variable, e.g. `dataset['lst']`."
        )
    check_grid(field, name="field")
    extra = [d for d in field.dims if d not in ("time", "y", "x")]
    if extra:
        raise ValueError(
            f"field must have dims (y, x) or (time, y, x); it also has {extra}. Select one, e.g. "
            f"`field.isel({extra[0]}=0)`."
        )
    field = field.transpose(..., "y", "x")
    stations, row, col, inside = _grid_positions(stations, field)
    n = len(stations)
    if n == 0:
        raise ValueError("There are no stations to sample.")
    ids = _station_ids(stations)
    if not inside.any():
        px = stations.geometry.x.to_numpy(dtype=np.float64)
        py = stations.geometry.y.to_numpy(dtype=np.float64)
        xs, ys = field["x"].values.astype(np.float64), field["y"].values.astype(np.float64)
        raise ValueError(
            f"None of the {n} stations lies inside the grid: the stations span x {px.min():.6g} to "
            f"{px.max():.6g}, y {py.min():.6g} to {py.max():.6g}; the grid spans x {xs.min():.6g} to "
            f"{xs.max():.6g}, y {ys.min():.6g} to {ys.max():.6g}. Check the stations' CRS "
            f"(declared: {stations.crs.to_string() if stations.crs is not None else 'none'})."
        )
    if not inside.all():
        outside_ids = sorted(set(ids[~inside]))
        shown = ", ".join(outside_ids[:10]) + (", ..." if len(outside_ids) > 10 else "")
        warnings.warn(
            f"{len(outside_ids)} station(s) lie outside the grid ({shown}); their values are NaN.",
            stacklevel=stacklevel,
        )
    values = np.asarray(field.values, dtype=np.float64)
    time_index = _time_indices(field, stations, tolerance, stacklevel=stacklevel + 1)
    if values.ndim == 2:
        values = values[None]
    if time_index is None:
        time_index = np.zeros(n, dtype=np.int64)
    matched = time_index >= 0
    t = np.where(matched, time_index, 0)
    if method == "nearest":
        i, j = _nearest_cells(row, col, values.shape[-2:])
        out = values[t, i, j]
    else:
        out = _bilinear_at(values, t, row, col)
    return np.where(inside & matched, out, np.nan)


def _bilinear_at(values, t, row, col):
    """Bilinear interpolation between cell centres, edges held constant, NaN neighbours left out."""
    ny, nx = values.shape[-2:]
    total = np.zeros(t.size)
    weight = np.zeros(t.size)
    r = np.clip(row, 0, ny - 1)
    c = np.clip(col, 0, nx - 1)
    r0 = np.minimum(np.floor(r).astype(np.int64), ny - 2)
    c0 = np.minimum(np.floor(c).astype(np.int64), nx - 2)
    wr, wc = r - r0, c - c0
    for di, w_row in ((0, 1 - wr), (1, wr)):
        for dj, w_col in ((0, 1 - wc), (1, wc)):
            sample = values[t, r0 + di, c0 + dj]
            w = w_row * w_col
            valid = np.isfinite(sample)
            total += np.where(valid, sample, 0.0) * w
            weight += valid * w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 1e-12, total / weight, np.nan)


def extract_at_points(field, stations, method: str = "nearest", tolerance=None) -> np.ndarray:
    """Sample a grid at station points: one value per station record, NaN where it cannot be sampled.

    Parameters
    ----------
    field : xarray.DataArray
        Dims ``(y, x)`` or ``(time, y, x)``, with a CRS (see :func:`downscale.grid.set_crs`).
    stations : geopandas.GeoDataFrame
        Points, reprojected to the field's CRS. With a ``time`` column and a
        field with a ``time`` dim, each record is sampled at its matching time
        step (see :func:`match_times`).
    method : {"nearest", "bilinear"}
        ``"nearest"``: the cell that contains the point. ``"bilinear"``:
        between the four surrounding cell centres (held constant beyond the
        outermost centres; NaN neighbours are left out and the weights renormalised).
    tolerance : str or timedelta, optional
        Time matching window (default in :func:`match_times`).

    Returns
    -------
    numpy.ndarray
        Aligned with the rows of ``stations``; NaN outside the grid (with a
        warning) or without a matching time.

    Examples
    --------
    >>> import numpy as np, xarray as xr, geopandas as gpd
    >>> field = xr.DataArray([[0.0, 10.0], [20.0, 30.0]], dims=("y", "x"), coords={"y": [1.5, 0.5], "x": [0.5, 1.5]})
    >>> points = gpd.GeoDataFrame(geometry=gpd.points_from_xy([0.5, 1.2], [1.5, 0.8]))
    >>> extract_at_points(field, points).tolist()
    [0.0, 30.0]
    >>> extract_at_points(field, points, "bilinear").round(6).tolist()   # 0.3*0.7*10 + 0.7*0.3*20 + 0.7*0.7*30
    [0.0, 21.0]
    """
    return _sample(field, stations, method, tolerance)


def _scores_of(observed, predicted, coarse, n_min_corr=3):
    """One row of scores; correlation-type scores need ``n_min_corr`` pairs, a single pair gives its error."""
    pairs = [observed, predicted] + ([coarse] if coarse is not None else [])
    valid = np.ones(observed.size, dtype=bool)
    for a in pairs:
        valid &= np.isfinite(a)
    n = int(valid.sum())
    row = {"n": n}
    for name, metric in SCORES.items():
        needs = n_min_corr if name in ("r", "kge", "nse") else 1
        row[name] = metric(observed[valid], predicted[valid]) if n >= needs else np.nan
    if coarse is not None:
        row["gdown"] = (
            metrics.gdown(observed[valid], predicted[valid], coarse[valid]) if n >= n_min_corr else np.nan
        )
    return row


def station_scores(
    pred,
    stations,
    coarse=None,
    value: str = "value",
    method: str = "nearest",
    ci: bool = True,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    tolerance=None,
) -> pd.DataFrame:
    """Score a prediction at the stations: one row per station and an ``overall`` row.

    Parameters
    ----------
    pred : xarray.DataArray
        The downscaled field, ``(y, x)`` or ``(time, y, x)``.
    stations : geopandas.GeoDataFrame
        Points with a CRS, a ``value`` column, optionally ``time`` and ``station_id``.
    coarse : xarray.DataArray, optional
        The coarse input field; when given, ``gdown`` (Merlin et al. 2015) compares the
        downscaled field with the coarse value of the cell containing each station
        (nearest, i.e. without any interpolation).
    value : str
        Column of the observations.
    method : {"nearest", "bilinear"}
        How ``pred`` is sampled at the points.
    ci : bool
        Add percentile-bootstrap intervals ``<metric>_low`` / ``<metric>_high`` to the
        ``overall`` row (whole stations are resampled when they have several times).
    n_boot, level, seed
        Passed to :func:`downscale.validation.metrics.bootstrap_ci`.
    tolerance : optional
        Time matching window (see :func:`match_times`).

    Returns
    -------
    pandas.DataFrame
        Index ``station`` (the station ids, then ``"overall"``); columns ``n`` (valid pairs),
        ``rmse, mae, bias, r, ubrmse, kge, nse`` (and ``gdown``). A station with a single
        time has its error in ``bias`` (``rmse`` and ``mae`` its absolute value) and NaN for
        the scores that need a series (r, kge, nse, gdown need 3 or more pairs).

    Examples
    --------
    >>> import numpy as np, xarray as xr, geopandas as gpd
    >>> field = xr.DataArray([[1.0, 2.0], [3.0, 4.0]], dims=("y", "x"), coords={"y": [1.5, 0.5], "x": [0.5, 1.5]})
    >>> stations = gpd.GeoDataFrame({"station_id": ["a", "b", "c"], "value": [1.5, 2.0, 2.0]},
    ...                             geometry=gpd.points_from_xy([0.5, 1.5, 0.5], [1.5, 1.5, 0.5]))
    >>> scores = station_scores(field, stations, ci=False)
    >>> scores["bias"].round(3).tolist()
    [-0.5, 0.0, 1.0, 0.167]
    """
    _check_value_column(stations, value)
    predicted = _sample(pred, stations, method, tolerance)
    coarse_values = None
    if coarse is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same stations already warned on the fine grid
            coarse_values = _sample(coarse, stations, "nearest", tolerance)
    observed = pd.to_numeric(stations[value], errors="coerce").to_numpy(dtype=np.float64)
    ids = _station_ids(stations)
    rows, index = [], []
    for station in pd.unique(ids):
        at = ids == station
        rows.append(
            _scores_of(observed[at], predicted[at], None if coarse_values is None else coarse_values[at])
        )
        index.append(station)
    overall = _scores_of(observed, predicted, coarse_values)
    if overall["n"] < 3:
        warnings.warn(
            f"Only {overall['n']} valid station value(s): the overall scores are not meaningful.",
            stacklevel=2,
        )
    if ci:
        valid = np.isfinite(observed) & np.isfinite(predicted)
        if coarse_values is not None:
            valid &= np.isfinite(coarse_values)
        repeated = pd.Series(ids[valid]).duplicated().any()
        groups = ids[valid] if repeated else None
        names = list(SCORES) + (["gdown"] if coarse_values is not None else [])
        for name in names:
            metric = SCORES.get(name, metrics.gdown)
            extra = {"y_coarse": coarse_values[valid]} if name == "gdown" else {}
            low, high = metrics.bootstrap_ci(
                metric,
                observed[valid],
                predicted[valid],
                n_boot=n_boot,
                level=level,
                seed=seed,
                groups=groups,
                **extra,
            )
            overall[f"{name}_low"], overall[f"{name}_high"] = low, high
    rows.append(overall)
    index.append("overall")
    table = pd.DataFrame(rows, index=pd.Index(index, name="station"))
    table["n"] = table["n"].astype(int)
    return table


def station_noise_values(stations, noise) -> np.ndarray:
    """The stations' own error as one standard deviation per record.

    ``noise`` is None (no noise: zeros), a number, or the name of a column of ``stations``. Raises
    ``ValueError`` for a missing column or a negative value.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"value": [1.0, 2.0], "sigma": [0.1, 0.3]})
    >>> station_noise_values(table, "sigma").tolist(), station_noise_values(table, 0.5).tolist()
    ([0.1, 0.3], [0.5, 0.5])
    """
    if noise is None:
        return np.zeros(len(stations))
    if isinstance(noise, str):
        if noise not in stations.columns:
            raise ValueError(
                f"The stations have no column {noise!r} for the noise; their columns are "
                f"{[c for c in stations.columns if c != 'geometry']}. Pass noise=<column> or a number (the "
                f"std of a station value)."
            )
        values = pd.to_numeric(stations[noise], errors="coerce").to_numpy(dtype=np.float64)
    else:
        values = np.broadcast_to(np.asarray(noise, dtype=np.float64), (len(stations),)).copy()
    if np.any(values < 0):
        raise ValueError(
            f"The station noise must be a standard deviation (>= 0); its least value is {float(np.nanmin(values))!r}."
        )
    return values


def conformal_scale(observed, predicted, spread, coverage: float = 0.9, noise=0.0):
    """The split-conformal factor of :func:`calibrate_std` from paired arrays, and how many pairs set it.

    Pairs with a NaN or a std that is not positive are left out. Raises ``ValueError`` when there are
    too few pairs for ``coverage``. With a measurement ``noise`` (std, a number or one per pair), the
    factor ``s`` is the least that puts the share ``coverage`` of the observations inside
    ``predicted +- z sqrt(s**2 spread**2 + noise**2)``: each pair needs
    ``s >= sqrt(max(error**2 - z**2 noise**2, 0)) / (z spread)``.

    Examples
    --------
    >>> z = 1.6448536269514722
    >>> scale, n = conformal_scale(np.arange(1.0, 10.0), np.zeros(9), np.full(9, 1 / z))
    >>> round(scale, 6), n
    (9.0, 9)
    >>> scale, n = conformal_scale(np.arange(1.0, 10.0), np.zeros(9), np.full(9, 1 / z), noise=5.4 / z)
    >>> round(scale, 6)                     # sqrt(9**2 - 5.4**2): the noise explains part of the error
    7.2
    """
    from scipy.stats import norm

    observed, predicted, spread = (np.asarray(a, dtype=np.float64) for a in (observed, predicted, spread))
    noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), observed.shape)
    if np.any(noise < 0):
        raise ValueError(
            f"The station noise must be a standard deviation (>= 0); its least value is {float(noise.min())!r}."
        )
    z = float(norm.ppf(0.5 + coverage / 2))
    ok = (
        np.isfinite(observed)
        & np.isfinite(predicted)
        & np.isfinite(spread)
        & (spread > 0)
        & np.isfinite(noise)
    )
    excess = np.maximum((observed[ok] - predicted[ok]) ** 2 - (z * noise[ok]) ** 2, 0.0)
    ratios = np.sort(np.sqrt(excess) / (z * spread[ok]))
    n = ratios.size

    def rank(count):  # the conformal rank; the 1e-9 keeps float noise (10 * 0.9) from raising it by one
        return int(np.ceil((count + 1) * coverage - 1e-9))

    if rank(n) > n:
        needed = max(1, int(coverage / (1 - coverage)) - 1)
        while rank(needed) > needed:
            needed += 1
        raise ValueError(
            f"{n} station value(s) with a prediction and a positive std: a {coverage:.0%} interval needs at "
            f"least {needed} (the ceil((n + 1) * coverage)-th ratio must exist). Use more stations (or "
            f"times), or a lower coverage."
        )
    return float(ratios[rank(n) - 1]), n


def calibrate_std(
    pred,
    std,
    stations,
    coverage: float = 0.9,
    value: str = "value",
    method: str = "nearest",
    tolerance=None,
    noise=None,
) -> xr.DataArray:
    """Scale a standard deviation so that its intervals cover the station values (split conformal).

    ``pred +- z * scale * std`` (``z`` the normal quantile of ``coverage``) is made to hold the
    share ``coverage`` of station values: ``scale`` is the ``ceil((n + 1) * coverage)``-th smallest
    of the ``n`` ratios ``|observed - pred| / (z * std)`` at the stations. If the pixels you care
    about are like the station sites (exchangeable with them), the calibrated intervals then cover
    at least ``coverage`` of their values, whatever the model got wrong about its own uncertainty.
    Keep some stations out of the calibration to check it, and remember what a station sees: a
    point, with its own measurement noise, not a pixel mean (intervals for station-like values).

    Parameters
    ----------
    pred, std : xarray.DataArray
        The prediction and its standard deviation (e.g. from ``Downscaler.predict(X, return_std=True)``).
    stations : geopandas.GeoDataFrame
        Points with a CRS and a ``value`` column (optionally ``time``): see :func:`station_scores`.
    coverage : float
        Nominal coverage of the intervals, between 0 and 1.
    value, method, tolerance
        As in :func:`station_scores`.
    noise : float or str, optional
        Standard deviation of the stations' own measurement error (and point-versus-pixel mismatch),
        in the field's units: a number, or the name of a column with one per station value. The scale
        is then set so that ``pred +- z sqrt((scale std)**2 + noise**2)`` holds the share ``coverage``
        of station values, and the returned std is that of the pixel value, without the noise.
        Without it, noisy stations make the intervals too wide: what they see that a pixel does not
        is taken for model error.

    Returns
    -------
    xarray.DataArray
        ``std * scale``, with attributes ``std_scale`` (the factor), ``std_scale_coverage`` and
        ``std_scale_stations`` (how many station values set it).

    Examples
    --------
    >>> import numpy as np, xarray as xr, geopandas as gpd
    >>> pred = xr.DataArray(np.zeros((3, 3)), dims=("y", "x"), coords={"y": [2.5, 1.5, 0.5], "x": [0.5, 1.5, 2.5]})
    >>> std = xr.full_like(pred, 1.0 / 1.6448536269514722)       # intervals of +-1 at 90 %
    >>> stations = gpd.GeoDataFrame({"value": np.arange(1.0, 10.0)},  # errors 1, 2, ..., 9
    ...                             geometry=gpd.points_from_xy(np.tile([0.5, 1.5, 2.5], 3), np.repeat([2.5, 1.5, 0.5], 3)))
    >>> calibrated = calibrate_std(pred, std, stations)   # 9 values: the largest error sets the scale
    >>> round(calibrated.attrs["std_scale"], 6), calibrated.attrs["std_scale_stations"]
    (9.0, 9)
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage!r}.")
    _check_value_column(stations, value)
    if not isinstance(std, xr.DataArray) or std.dims != pred.dims or std.shape != pred.shape:
        raise ValueError(
            f"std must be a DataArray on the grid of pred (dims {pred.dims}, shape {pred.shape}), got "
            f"{getattr(std, 'dims', type(std).__name__)} {getattr(std, 'shape', '')}."
        )
    observed = stations[value].to_numpy(dtype=np.float64)
    noise = station_noise_values(stations, noise)
    predicted = _sample(pred, stations, method, tolerance)
    spread = _sample(std, stations, method, tolerance)
    scale, n = conformal_scale(observed, predicted, spread, coverage, noise=noise)
    out = std * scale
    out.attrs = dict(std.attrs)
    out.attrs.update(std_scale=scale, std_scale_coverage=float(coverage), std_scale_stations=int(n))
    return out
