"""Regular grids as xarray objects: nesting, area-weighted block means, pixel tables and CRS.

A *grid* here is an xarray object with spatial dimensions ``y`` and ``x``
(optionally ``time`` first), regular 1-D coordinates of cell centres, and a
coordinate reference system stored the CF way (a ``spatial_ref`` grid-mapping
variable written by rioxarray). A fine grid *nests* in a coarse grid when
every coarse cell is exactly a ``factor x factor`` block of fine cells.

Every function that averages fine cells into coarse ones goes through
:func:`block_mean`, so that aggregation, residuals and the coherence check all
use the same weights: exact spherical cell areas on geographic grids, equal
weights on projected grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "EARTH_RADIUS",
    "PixelTable",
    "block_mean",
    "block_sum_weights",
    "cell_area",
    "cell_size_metres",
    "check_grid",
    "coarse_grid",
    "fine_grid",
    "from_table",
    "get_crs",
    "grid_step",
    "is_geographic",
    "make_grid",
    "nesting_factor",
    "set_crs",
    "to_table",
    "upsample",
]

#: Radius of the sphere (metres) used for cell areas on geographic grids
#: (the authalic radius of WGS84, which gives the ellipsoid's total area).
EARTH_RADIUS = 6_371_007.2

#: Coordinates count as regular when every step is within this fraction of the mean step.
REGULAR_TOLERANCE = 0.01

#: Use the compiled (numba) kernels of :mod:`downscale._kernels` (block mean, NaN-aware standard deviation)
#: when numba is installed; the numpy code gives the same numbers.
USE_NUMBA = True


# --------------------------------------------------------------------------- CRS


def get_crs(obj):
    """Return the CRS of a grid as a :class:`pyproj.CRS`, or ``None`` if it has none.

    The CRS is read the way rioxarray reads it: from the CF grid-mapping
    variable (``spatial_ref`` or the one named by the ``grid_mapping``
    attribute or encoding), or from a ``crs`` attribute.

    Examples
    --------
    >>> import downscale as ds
    >>> grid = ds.grid.make_grid((4, 5), 1000.0, crs="EPSG:32632")
    >>> ds.grid.get_crs(grid).to_epsg()
    32632
    """
    import pyproj
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    crs = None
    try:
        crs = obj.rio.crs
    except Exception:  # rioxarray raises on odd objects; treat as "no CRS"
        crs = None
    if crs is None:
        attr = obj.attrs.get("crs") if hasattr(obj, "attrs") else None
        if attr is not None:
            return pyproj.CRS.from_user_input(attr)
        return None
    return pyproj.CRS.from_user_input(crs.to_wkt())


def set_crs(obj, crs):
    """Return a copy of ``obj`` with ``crs`` written as a CF grid mapping (``spatial_ref``).

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
    crs : anything :class:`pyproj.CRS` accepts (``"EPSG:4326"``, a WKT string, a CRS)

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> da = xr.DataArray(np.zeros((2, 2)), dims=("y", "x"), coords={"y": [1.5, 0.5], "x": [0.5, 1.5]})
    >>> ds.grid.set_crs(da, "EPSG:3035").spatial_ref.attrs["grid_mapping_name"]
    'lambert_azimuthal_equal_area'
    """
    import pyproj
    import rioxarray  # noqa: F401

    crs = pyproj.CRS.from_user_input(crs)
    out = obj.rio.write_crs(crs.to_wkt())
    if isinstance(out, xr.Dataset):
        for name in out.data_vars:
            if {"y", "x"} <= set(out[name].dims):
                out[name].attrs["grid_mapping"] = "spatial_ref"
                out[name].encoding.pop("grid_mapping", None)
    else:
        out.attrs["grid_mapping"] = "spatial_ref"
        out.encoding.pop("grid_mapping", None)
    return out


def is_geographic(obj) -> bool:
    """True when the grid's CRS is geographic (lat/lon degrees).

    A grid with no CRS is treated as projected (metres); :func:`check_grid`
    with ``require_crs=True`` refuses it instead.
    """
    crs = get_crs(obj)
    return bool(crs is not None and crs.is_geographic)


# ------------------------------------------------------------------ coordinates


def grid_step(coord, name: str = "coordinate", axis: str | None = None) -> float:
    """Return the signed step of a regular 1-D coordinate.

    Coordinates count as regular when every step is within 1 % of the mean
    step (float32 coordinates in real files jitter by about 0.2 %); they are
    then treated as exactly regular with the mean step.

    Raises
    ------
    ValueError
        If the coordinate has fewer than two values, is not monotonic, or is irregular.

    Examples
    --------
    >>> grid_step([0.5, 1.5, 2.5])
    1.0
    >>> grid_step([10.0, 8.0, 6.0])
    -2.0
    """
    values = np.asarray(coord, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"Expected a 1-D {name} coordinate, got {values.ndim} dimensions.")
    if values.size < 2:
        raise ValueError(
            f"The {name} coordinate has {values.size} value(s); a grid needs at least 2 cells "
            f"along each axis to have a cell size."
        )
    steps = np.diff(values)
    mean_step = (values[-1] - values[0]) / (values.size - 1)
    if mean_step == 0 or not (np.all(steps > 0) or np.all(steps < 0)):
        raise ValueError(
            f"The {name} coordinate is not sorted (it is not strictly increasing or decreasing). "
            f"Sort it first, e.g. `data.sortby('{axis or name}')`."
        )
    worst = np.max(np.abs(steps - mean_step)) / abs(mean_step)
    if worst > REGULAR_TOLERANCE:
        raise ValueError(
            f"The {name} coordinate is not regular: steps vary by {worst:.1%} of the mean step "
            f"{mean_step:g} (at most {REGULAR_TOLERANCE:.0%} is accepted). Regrid the data onto a "
            f"regular grid first, e.g. with `downscale.align.to_nested` or `rioxarray.reproject`."
        )
    return float(mean_step)


def check_grid(obj, require_crs: bool = False, name: str = "data"):
    """Check that ``obj`` is a grid: dims ``y`` and ``x`` last, regular 1-D coordinates.

    Returns ``obj`` unchanged, so it can be used inline.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
    require_crs : bool
        Raise when the grid has no CRS.
    name : str
        How the object is named in error messages.

    Raises
    ------
    TypeError, ValueError
        With a message that says what was expected, what was given and the fix.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> check_grid(xr.DataArray(np.zeros(3), dims="t"))
    Traceback (most recent call last):
    ...
    ValueError: data must have spatial dimensions ('y', 'x'); it has ('t',). Rename them, e.g. `data.rename({'lat': 'y', 'lon': 'x'})`.
    """
    if not isinstance(obj, (xr.DataArray, xr.Dataset)):
        raise TypeError(f"{name} must be an xarray DataArray or Dataset, got {type(obj).__name__}.")
    dims = tuple(obj.dims)
    if "y" not in dims or "x" not in dims:
        raise ValueError(
            f"{name} must have spatial dimensions ('y', 'x'); it has {dims}. "
            f"Rename them, e.g. `{name}.rename({{'lat': 'y', 'lon': 'x'}})`."
        )
    if isinstance(obj, xr.DataArray) and dims[-2:] != ("y", "x"):
        raise ValueError(
            f"{name} must have ('y', 'x') as its last two dimensions; it has {dims}. "
            f"Use `{name}.transpose(..., 'y', 'x')`."
        )
    for axis in ("y", "x"):
        if axis not in obj.coords:
            raise ValueError(
                f"{name} has no '{axis}' coordinate; a grid needs cell-centre coordinates. "
                f"Assign them, e.g. `{name}.assign_coords({axis}=...)`."
            )
        grid_step(obj[axis].values, name=f"{name} '{axis}'", axis=axis)
    if require_crs and get_crs(obj) is None:
        raise ValueError(
            f"{name} has no CRS. Declare it, e.g. `downscale.grid.set_crs({name}, 'EPSG:32632')` "
            f"or `{name}.rio.write_crs('EPSG:4326')`."
        )
    return obj


def make_grid(shape, cell_size, origin=(0.0, 0.0), crs=None, north_up: bool = True):
    """Make an empty grid (a coordinates-only Dataset) of ``shape = (ny, nx)`` cells.

    Parameters
    ----------
    shape : (int, int)
        Number of cells along y and x.
    cell_size : float or (float, float)
        Cell size along (y, x), positive, in CRS units.
    origin : (float, float)
        ``(x, y)`` of the lower-left corner of the grid.
    crs : optional
        Anything :class:`pyproj.CRS` accepts.
    north_up : bool
        When true (the GeoTIFF convention), ``y`` decreases with row index.

    Examples
    --------
    >>> g = make_grid((2, 3), 1000.0, origin=(0.0, 0.0))
    >>> g.x.values.tolist(), g.y.values.tolist()
    ([500.0, 1500.0, 2500.0], [1500.0, 500.0])
    """
    ny, nx = (int(n) for n in shape)
    dy, dx = (float(cell_size), float(cell_size)) if np.isscalar(cell_size) else map(float, cell_size)
    x = origin[0] + dx * (np.arange(nx) + 0.5)
    y = origin[1] + dy * (np.arange(ny) + 0.5)
    if north_up:
        y = y[::-1]
    grid = xr.Dataset(coords={"y": ("y", y), "x": ("x", x)})
    grid = _with_axis_attrs(grid, crs)
    if crs is not None:
        grid = set_crs(grid, crs)
    return grid


def _with_axis_attrs(obj, crs=None):
    """Attach CF axis attributes to the x/y coordinates."""
    import pyproj

    geographic = crs is not None and pyproj.CRS.from_user_input(crs).is_geographic
    obj = obj.copy()
    if geographic:
        obj["x"].attrs.update(standard_name="longitude", units="degrees_east", axis="X")
        obj["y"].attrs.update(standard_name="latitude", units="degrees_north", axis="Y")
    else:
        obj["x"].attrs.update(standard_name="projection_x_coordinate", units="m", axis="X")
        obj["y"].attrs.update(standard_name="projection_y_coordinate", units="m", axis="Y")
    return obj


def nesting_factor(coarse, fine) -> int:
    """Return the integer ``factor`` such that every coarse cell is a ``factor x factor`` block of fine cells.

    Parameters
    ----------
    coarse, fine : xarray.DataArray or xarray.Dataset
        Grids with regular ``y`` and ``x`` coordinates in the same CRS.

    Raises
    ------
    ValueError
        Saying which axis does not nest and by how much, and how to fix it.

    Examples
    --------
    >>> coarse = make_grid((2, 2), 25_000.0)
    >>> fine = make_grid((50, 50), 1_000.0)
    >>> nesting_factor(coarse, fine)
    25
    """
    check_grid(coarse, name="coarse")
    check_grid(fine, name="fine")
    crs_coarse, crs_fine = get_crs(coarse), get_crs(fine)
    if crs_coarse is not None and crs_fine is not None and not crs_coarse.equals(crs_fine):
        raise ValueError(
            f"The coarse and fine grids have different CRS ({_crs_name(crs_coarse)} vs "
            f"{_crs_name(crs_fine)}). Bring the coarse field onto the fine grid's CRS with "
            f"`downscale.align.to_nested(coarse, fine)`."
        )
    factors = []
    for axis in ("y", "x"):
        step_c = grid_step(coarse[axis].values, f"coarse '{axis}'")
        step_f = grid_step(fine[axis].values, f"fine '{axis}'")
        if np.sign(step_c) != np.sign(step_f):
            raise ValueError(
                f"The '{axis}' coordinate runs in opposite directions on the coarse and fine grids. "
                f"Flip one of them, e.g. `coarse.isel({axis}=slice(None, None, -1))`."
            )
        ratio = step_c / step_f
        factor = int(round(ratio))
        if factor < 1 or abs(ratio - factor) > 1e-6 * max(1.0, ratio):
            raise ValueError(
                f"The grids do not nest along '{axis}': the coarse cell size {abs(step_c):g} is "
                f"{ratio:.6g} times the fine cell size {abs(step_f):g}, not a whole number. "
                f"Use `downscale.align.to_nested(coarse, fine)` to remap the coarse field."
            )
        n_c, n_f = coarse.sizes[axis], fine.sizes[axis]
        if n_c * factor != n_f:
            raise ValueError(
                f"The grids do not nest along '{axis}': {n_c} coarse cells x factor {factor} = "
                f"{n_c * factor} fine cells, but the fine grid has {n_f}. Crop the fine grid to "
                f"whole coarse blocks or use `downscale.align.to_nested(coarse, fine)`."
            )
        # The edges must coincide: first coarse edge == first fine edge.
        edge_c = coarse[axis].values[0] - step_c / 2
        edge_f = fine[axis].values[0] - step_f / 2
        offset = (edge_c - edge_f) / abs(step_f)
        if abs(offset) > 0.01:
            raise ValueError(
                f"The grids do not nest along '{axis}': the coarse cell edges are shifted by "
                f"{offset:.3g} fine cells from the fine cell edges. "
                f"Use `downscale.align.to_nested(coarse, fine)` to remap the coarse field."
            )
        factors.append(factor)
    if factors[0] != factors[1]:
        raise ValueError(
            f"The grids nest with different factors along y ({factors[0]}) and x ({factors[1]}); "
            f"square blocks are required. Use `downscale.align.to_nested(coarse, fine)`."
        )
    return factors[0]


def _crs_name(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def coarse_grid(fine, factor: int):
    """Return the coordinates-only coarse grid whose cells are ``factor x factor`` blocks of ``fine``.

    Examples
    --------
    >>> g = coarse_grid(make_grid((4, 4), 1.0), 2)
    >>> g.x.values.tolist()
    [1.0, 3.0]
    """
    check_grid(fine, name="fine")
    factor = _check_factor(factor)
    for axis in ("y", "x"):
        if fine.sizes[axis] % factor:
            raise ValueError(
                f"The fine grid has {fine.sizes[axis]} cells along '{axis}', which is not a multiple "
                f"of the factor {factor}. Crop it to whole blocks, e.g. "
                f"`fine.isel({axis}=slice(0, {fine.sizes[axis] // factor * factor}))`."
            )
    coords = {}
    for axis in ("y", "x"):
        values = np.asarray(fine[axis].values, dtype=float)
        coords[axis] = (axis, values.reshape(-1, factor).mean(axis=1), dict(fine[axis].attrs))
    return _grid_like(fine, coords)


def fine_grid(coarse, factor: int):
    """Return the coordinates-only fine grid that nests ``factor x factor`` cells in each cell of ``coarse``.

    Examples
    --------
    >>> g = fine_grid(make_grid((2, 2), 2.0), 2)
    >>> g.x.values.tolist(), g.y.values.tolist()
    ([0.5, 1.5, 2.5, 3.5], [3.5, 2.5, 1.5, 0.5])
    """
    check_grid(coarse, name="coarse")
    factor = _check_factor(factor)
    coords = {}
    for axis in ("y", "x"):
        values = np.asarray(coarse[axis].values, dtype=float)
        step = grid_step(values, f"coarse '{axis}'")
        offsets = (np.arange(factor) + 0.5) / factor - 0.5
        coords[axis] = (axis, (values[:, None] + step * offsets[None, :]).ravel(), dict(coarse[axis].attrs))
    return _grid_like(coarse, coords)


def _grid_like(template, coords):
    grid = xr.Dataset(coords=coords)
    crs = get_crs(template)
    if crs is not None:
        grid = set_crs(grid, crs)
    return grid


def _check_factor(factor) -> int:
    if isinstance(factor, (bool, np.bool_)) or not float(factor).is_integer() or int(factor) < 1:
        raise ValueError(f"factor must be a positive whole number, got {factor!r}.")
    return int(factor)


# ------------------------------------------------------------------------ areas


def cell_area(obj):
    """Area of every cell of the grid in square metres, as a ``(y, x)`` DataArray.

    On geographic grids the area is the exact area of the cell on a sphere of
    radius :data:`EARTH_RADIUS`: ``R**2 * dlon * (sin(lat_top) - sin(lat_bottom))``.
    On projected grids every cell has area ``|dx * dy|`` (CRS units squared).

    Examples
    --------
    >>> g = make_grid((2, 2), 1.0, origin=(0.0, 0.0), crs="EPSG:4326")
    >>> area = cell_area(g)
    >>> bool(area[1, 0] > area[0, 0])   # the row nearer the equator is larger
    True
    """
    check_grid(obj)
    y = np.asarray(obj["y"].values, dtype=float)
    x = np.asarray(obj["x"].values, dtype=float)
    dy = grid_step(y, "'y'")
    dx = grid_step(x, "'x'")
    if is_geographic(obj):
        lat_edges_low = np.deg2rad(np.clip(y - abs(dy) / 2, -90, 90))
        lat_edges_high = np.deg2rad(np.clip(y + abs(dy) / 2, -90, 90))
        row_area = EARTH_RADIUS**2 * np.deg2rad(abs(dx)) * (np.sin(lat_edges_high) - np.sin(lat_edges_low))
        values = np.broadcast_to(row_area[:, None], (y.size, x.size)).copy()
        units = "m2"
    else:
        values = np.full((y.size, x.size), abs(dx * dy))
        units = "m2"
    return xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": obj["y"], "x": obj["x"]},
        name="cell_area",
        attrs={"units": units, "long_name": "cell area", "standard_name": "cell_area"},
    )


def cell_size_metres(obj):
    """Cell size ``(dy, dx)`` in metres for every row: two 1-D arrays of length ``ny``.

    On projected grids these are constant (the CRS unit is assumed to be the
    metre, which is checked). On geographic grids ``dx`` shrinks with the
    cosine of latitude.

    Examples
    --------
    >>> g = make_grid((2, 2), 1.0, origin=(0.0, 59.0), crs="EPSG:4326")
    >>> dy, dx = cell_size_metres(g)
    >>> round(float(dx[1] / dy[1]), 3)   # row centred at 59.5 N: cos(59.5 deg)
    0.508
    """
    check_grid(obj)
    y = np.asarray(obj["y"].values, dtype=float)
    dy = abs(grid_step(y, "'y'"))
    dx = abs(grid_step(obj["x"].values, "'x'"))
    crs = get_crs(obj)
    if crs is not None and crs.is_geographic:
        metres_per_degree = np.deg2rad(1.0) * EARTH_RADIUS
        return (
            np.full(y.size, dy * metres_per_degree),
            dx * metres_per_degree * np.cos(np.deg2rad(y)),
        )
    if crs is not None:
        unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
        if unit not in ("metre", "meter", "m"):
            raise ValueError(
                f"The grid's CRS {_crs_name(crs)} has axis unit '{unit}', not metres. "
                f"Reproject it to a metric CRS, e.g. `data.rio.reproject('EPSG:3035')`."
            )
    return np.full(y.size, dy), np.full(y.size, dx)


# ------------------------------------------------------------------ block mean


def block_sum_weights(obj, factor: int):
    """Per-row weights used by :func:`block_mean` (cell areas relative to the block), as a 1-D array.

    Equal to one on projected grids; proportional to the spherical cell area on geographic grids.
    """
    check_grid(obj)
    if is_geographic(obj):
        area = cell_area(obj).values[:, 0]
        return area / area.mean()
    return np.ones(obj.sizes["y"])


def _block_mean_array(values, row_weights, factor, min_valid):
    """Block mean of ``values (..., ny, nx)``: NaN-aware, weighted by rows. Returns ``(mean, fraction)``.

    The compiled kernel :func:`downscale._kernels.block_mean` runs when numba is installed and
    ``USE_NUMBA`` is true (float32 values are read as they are, without a float64 copy);
    :func:`_block_mean_numpy` is the reference it reproduces.

    Parameters
    ----------
    values : numpy.ndarray
        ``(..., ny, nx)`` with ``ny`` and ``nx`` multiples of ``factor``; NaN cells are left out.
    row_weights : numpy.ndarray
        ``(ny,)`` weight of every fine row (see :func:`block_sum_weights`).
    factor : int
    min_valid : float
        Smallest weighted valid fraction of a block for it to get a mean (else NaN).

    Returns
    -------
    mean, fraction : numpy.ndarray
        ``(..., ny // factor, nx // factor)``, float64.
    """
    kernel = _compiled_kernel("block_mean")
    if kernel is None:
        return _block_mean_numpy(values, row_weights, factor, min_valid)
    values = np.asarray(values)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    *lead, ny, nx = values.shape
    mean, fraction = kernel(
        values.reshape(-1, ny, nx), np.asarray(row_weights, dtype=np.float64), int(factor), float(min_valid)
    )
    shape = (*lead, ny // factor, nx // factor)
    return mean.reshape(shape), fraction.reshape(shape)


def _compiled_kernel(name):
    """The compiled kernel ``name`` of :mod:`downscale._kernels`, or None without numba or with ``USE_NUMBA`` off.

    Callers then run the numpy code the kernel reproduces.
    """
    if not USE_NUMBA:
        return None
    try:
        from . import _kernels
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return getattr(_kernels, name)


def _block_mean_numpy(values, row_weights, factor, min_valid):
    """The numpy reference of :func:`_block_mean_array` (same arguments and results).

    The weights depend on the row only, so each block row is summed along x first and weighted
    after: one full-size temporary (the NaN-filled values) instead of four.
    """
    *lead, ny, nx = values.shape
    values = np.asarray(values, dtype=np.float64)
    blocks = values.reshape(*lead, ny // factor, factor, nx // factor, factor)
    weights = np.asarray(row_weights, dtype=np.float64).reshape(ny // factor, factor, 1)
    valid = ~np.isnan(blocks)
    row_sums = np.where(valid, blocks, 0.0).sum(axis=-1)  # (..., by, fy, bx)
    row_counts = valid.sum(axis=-1)
    weighted = (row_sums * weights).sum(axis=-2)
    valid_weight = (row_counts * weights).sum(axis=-2)
    total_weight = factor * weights.sum(axis=-2)  # (by, 1): every block of a block row weighs the same
    fraction = valid_weight / total_weight
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = weighted / valid_weight
    mean = np.where((valid_weight > 0) & (fraction >= min_valid - 1e-12), mean, np.nan)
    return mean, fraction


def block_mean(fine, factor: int, min_valid: float = 0.5, return_fraction: bool = False):
    """Average a fine field over ``factor x factor`` blocks onto the coarse grid.

    NaN cells are left out of each block's mean; a block whose valid fraction
    is below ``min_valid`` is NaN. On geographic grids each cell is weighted by
    its exact spherical area (see :func:`cell_area`), so the result is the true
    areal mean. This one function defines aggregation, residuals and coherence
    throughout the package.

    Parameters
    ----------
    fine : xarray.DataArray or xarray.Dataset
        Field(s) with dims ``(..., y, x)``; the grid size must be a multiple of ``factor``.
    factor : int
        Number of fine cells along each side of a coarse cell.
    min_valid : float, default 0.5
        Smallest (area) fraction of valid fine cells for a block to get a value.
        Use a tiny value such as ``1e-9`` to accept any valid cell.
    return_fraction : bool
        Also return the valid (area) fraction of each block.

    Returns
    -------
    mean : same type as ``fine``, on the coarse grid, float64
    fraction : xarray.DataArray, only when ``return_fraction``

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> g = make_grid((2, 4), 1.0)
    >>> field = xr.DataArray([[1.0, 3.0, np.nan, 4.0], [5.0, 7.0, np.nan, np.nan]],
    ...                      dims=("y", "x"), coords=g.coords)
    >>> mean, fraction = block_mean(field, 2, return_fraction=True)
    >>> mean.values.tolist(), fraction.values.tolist()
    ([[4.0, nan]], [[1.0, 0.25]])
    >>> block_mean(field, 2, min_valid=0.25).values.tolist()
    [[4.0, 4.0]]
    """
    check_grid(fine, name="fine")
    factor = _check_factor(factor)
    template = coarse_grid(fine, factor)
    row_weights = block_sum_weights(fine, factor)

    def one(da):
        if not {"y", "x"} <= set(da.dims):
            return da, None
        da = da.transpose(..., "y", "x")
        if da.isnull().all():
            raise ValueError(
                f"'{da.name}' is NaN everywhere; there is nothing to average. "
                f"Check the input file and its fill value."
            )
        mean, fraction = _block_mean_array(da.values, row_weights, factor, min_valid)
        coords = {k: v for k, v in da.coords.items() if "y" not in v.dims and "x" not in v.dims}
        coords.update(y=template["y"], x=template["x"])
        out = xr.DataArray(mean, dims=da.dims, coords=coords, name=da.name, attrs=dict(da.attrs))
        fraction_da = xr.DataArray(
            fraction,
            dims=da.dims,
            coords=coords,
            name="valid_fraction",
            attrs={"long_name": "valid fraction of the coarse cell", "units": "1"},
        )
        return out, fraction_da

    if isinstance(fine, xr.Dataset):
        variables, fractions = {}, {}
        for name, da in fine.data_vars.items():
            variables[name], fractions[name] = one(da)
        out = xr.Dataset(variables, attrs=dict(fine.attrs))
        fraction = xr.Dataset({k: v for k, v in fractions.items() if v is not None})
    else:
        out, fraction = one(fine)
    crs = get_crs(fine)
    if crs is not None:
        out = set_crs(out, crs)
        fraction = set_crs(fraction, crs)
    return (out, fraction) if return_fraction else out


def upsample(coarse, factor: int, method: str = "nearest"):
    """Bring a coarse field onto its nested fine grid: ``"nearest"`` (repeat) or ``"bilinear"``.

    Bilinear interpolation is between coarse cell centres, with the edge
    values held constant beyond the outermost centres; NaN neighbours are
    ignored (the weights of the valid ones are renormalised).

    Examples
    --------
    >>> import xarray as xr
    >>> g = make_grid((2, 2), 2.0)
    >>> field = xr.DataArray([[0.0, 4.0], [0.0, 4.0]], dims=("y", "x"), coords=g.coords)
    >>> upsample(field, 2).values[0].tolist()
    [0.0, 0.0, 4.0, 4.0]
    >>> upsample(field, 2, "bilinear").values[0].tolist()
    [0.0, 1.0, 3.0, 4.0]
    """
    check_grid(coarse, name="coarse")
    factor = _check_factor(factor)
    target = fine_grid(coarse, factor)
    values = np.asarray(coarse.transpose(..., "y", "x").values, dtype=np.float64)
    if method == "nearest":
        out = np.repeat(np.repeat(values, factor, axis=-2), factor, axis=-1)
    elif method == "bilinear":
        out = _bilinear(values, factor)
    else:
        raise ValueError(f"method must be 'nearest' or 'bilinear', got {method!r}.")
    dims = coarse.transpose(..., "y", "x").dims
    coords = {k: v for k, v in coarse.coords.items() if "y" not in v.dims and "x" not in v.dims}
    coords.update(y=target["y"], x=target["x"])
    result = xr.DataArray(out, dims=dims, coords=coords, name=coarse.name, attrs=dict(coarse.attrs))
    crs = get_crs(coarse)
    return set_crs(result, crs) if crs is not None else result


def _bilinear_axis(n, factor):
    """Indices and weights to interpolate between coarse centres along one axis."""
    position = (np.arange(n * factor) + 0.5) / factor - 0.5  # fine centres in coarse index units
    position = np.clip(position, 0, n - 1)
    low = np.minimum(np.floor(position).astype(int), max(n - 2, 0))
    high = np.minimum(low + 1, n - 1)
    weight_high = position - low
    return low, high, weight_high


def _bilinear(values, factor, rows=slice(None), columns=slice(None)):
    """Bilinear upsampling of ``values (..., ny, nx)`` at the fine ``rows`` and ``columns`` (default all).

    ``rows`` and ``columns`` index the whole fine grid (a slice or integer indices), so a window
    gets exactly the values of the whole grid's result there: the same edge rules and arithmetic.
    """
    *lead, ny, nx = values.shape
    y0, y1, wy = (a[rows] for a in _bilinear_axis(ny, factor))
    x0, x1, wx = (a[columns] for a in _bilinear_axis(nx, factor))
    valid = ~np.isnan(values)
    filled = np.where(valid, values, 0.0)
    total = np.zeros((*lead, y0.size, x0.size))
    weight = np.zeros_like(total)
    for row_index, row_w in ((y0, 1 - wy), (y1, wy)):
        for column_index, col_w in ((x0, 1 - wx), (x1, wx)):
            w = row_w[:, None] * col_w[None, :]
            total += filled[..., row_index[:, None], column_index[None, :]] * w
            weight += valid[..., row_index[:, None], column_index[None, :]] * w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 1e-12, total / weight, np.nan)


# ---------------------------------------------------------------- pixel tables


@dataclass
class PixelTable:
    """A grid flattened to a 2-D feature table of its valid pixels.

    Attributes
    ----------
    features : pandas.DataFrame
        One row per valid pixel (and time step), one column per variable.
    mask : numpy.ndarray of bool
        Shape of the grid (``(ny, nx)`` or ``(nt, ny, nx)``); true where a row exists.
    template : xarray.DataArray
        An all-NaN field on the source grid, to rebuild grids with :func:`from_table`.
    """

    features: pd.DataFrame
    mask: np.ndarray
    template: xr.DataArray


def to_table(data, mask=None) -> PixelTable:
    """Flatten a grid (DataArray or Dataset) into a :class:`PixelTable` of its valid pixels.

    A pixel is valid when every variable is finite there (and ``mask`` is
    true, when given). Time steps, if any, are stacked as extra rows.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> g = make_grid((2, 2), 1.0)
    >>> data = xr.Dataset({"a": (("y", "x"), [[1.0, 2.0], [np.nan, 4.0]])}, coords=g.coords)
    >>> table = to_table(data)
    >>> table.features["a"].tolist(), table.mask.tolist()
    ([1.0, 2.0, 4.0], [[True, True], [False, True]])
    >>> from_table(table.features["a"].to_numpy(), table).values.tolist()
    [[1.0, 2.0], [nan, 4.0]]
    """
    check_grid(data)
    dataset = data.to_dataset(name=data.name or "value") if isinstance(data, xr.DataArray) else data
    arrays = {}
    for name, da in dataset.data_vars.items():
        if {"y", "x"} <= set(da.dims):
            arrays[name] = da.transpose(..., "y", "x")
    if not arrays:
        raise ValueError("There are no variables with dims ('y', 'x') to put in a pixel table.")
    shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    template_da = max(arrays.values(), key=lambda a: a.ndim)
    valid = np.ones(shape, dtype=bool)
    for da in arrays.values():
        valid &= np.broadcast_to(np.isfinite(np.asarray(da.values, dtype=float)), shape)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    columns = {name: np.broadcast_to(np.asarray(da.values), shape)[valid] for name, da in arrays.items()}
    template = xr.full_like(template_da, np.nan, dtype=np.float64)
    template.name = None
    template.attrs = {}
    return PixelTable(pd.DataFrame(columns), valid, template)


def from_table(values, table: PixelTable, name=None, attrs=None):
    """Put one value per table row back on the grid of ``table`` (NaN elsewhere).

    The inverse of :func:`to_table`: ``from_table(to_table(g).features[v], table)`` equals ``g[v]``
    wherever the table has a row.
    """
    values = np.asarray(values)
    if values.shape[0] != int(table.mask.sum()):
        raise ValueError(
            f"Expected {int(table.mask.sum())} values (one per valid pixel of the table), "
            f"got {values.shape[0]}."
        )
    out = np.full(table.mask.shape, np.nan, dtype=np.float64)
    out[table.mask] = values
    result = table.template.copy(data=out)
    result.name = name
    if attrs:
        result.attrs.update(attrs)
    return result
