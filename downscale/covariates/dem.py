"""Terrain covariates from a digital elevation model: slope, aspect, curvature, TPI, roughness, TWI, illumination.

Every feature is computed in metres, whatever the grid: on geographic
(lat/lon) grids the east-west cell size shrinks with the cosine of latitude
(:func:`downscale.grid.cell_size_metres`), on projected grids the CRS unit must
be the metre. Derivatives are finite differences on the 3 x 3 neighbourhood;
where a neighbour is missing (the grid edge, the sea, a void) the missing
value is replaced by the linear extrapolation of the cell and its opposite
neighbour, which turns the central difference into a one-sided one. So every
valid cell gets a finite value and NaN cells stay NaN: the sea never spreads
into the land.

Sign conventions: ``northness = cos(aspect)`` and ``eastness = sin(aspect)``,
where the aspect is the compass direction the slope faces (the downslope
direction, clockwise from north); both are 0 on flat cells. Curvatures are in
1/m, positive where the surface is convex (hill tops, ridges: flow
accelerates or diverges) and negative where it is concave (valley floors:
flow decelerates or converges).

Every derived feature is computed in float64 and returned as float32
(:data:`FEATURE_DTYPE`), as gdaldem and xarray-spatial return them; each
function takes ``dtype=np.float64`` for full precision. The elevation feature
of :func:`dem_features` is the DEM's own array, in its own dtype.
"""

from __future__ import annotations

import contextlib
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
from scipy import ndimage

from .. import grid as grid_module

__all__ = [
    "DEM_FEATURES",
    "DEFAULT_TPI_RADII",
    "FEATURE_DTYPE",
    "aspect",
    "check_dem",
    "curvature",
    "dem_features",
    "eastness",
    "flow_accumulation",
    "northness",
    "roughness",
    "slope",
    "solar_illumination",
    "solar_position",
    "tpi",
    "twi",
]

#: Names ``dem_features`` understands; ``"tpi"`` expands to one variable per radius, ``"aspect"``
#: (compass degrees, discontinuous at north) and ``"solar"`` (needs a time) are not in the default set.
DEM_FEATURES = (
    "elevation",
    "slope",
    "northness",
    "eastness",
    "profile_curvature",
    "plan_curvature",
    "tpi",
    "roughness",
    "twi",
    "aspect",
    "solar",
)
DEFAULT_FEATURES = DEM_FEATURES[:9]

#: Default radii (metres) of the topographic position index.
DEFAULT_TPI_RADII = (1000.0, 5000.0, 15000.0)

#: Use the compiled (numba) kernels when numba is installed; the numpy code gives the same numbers.
USE_NUMBA = True

#: Smallest tan(slope) used by the wetness index, so flat cells get a large but finite value.
MIN_TAN_SLOPE = 1e-3

#: dtype of the terrain features unless one asks for another (``dtype=np.float64``). They are computed
#: in float64 and stored in float32, as GDAL's gdaldem and xarray-spatial store them: seven significant
#: digits, far finer than the accuracy of any DEM, in half the memory of float64.
FEATURE_DTYPE = np.float32

_METRE_UNITS = {"m", "metre", "meter", "metres", "meters", "m asl", "m a.s.l.", "m above sea level"}
_DEGREE_UNITS = {"degrees", "degree", "deg", "degrees_east", "degrees_north", "degree_east", "degree_north"}


# --------------------------------------------------------------------------- input checks


def check_dem(dem, name: str = "dem") -> xr.DataArray:
    """Check that ``dem`` is a 2-D elevation grid in metres with a CRS; return it as float64.

    Raises
    ------
    TypeError, ValueError
        Saying what was expected, what was given and how to fix it.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((3, 3), 100.0)
    >>> check_dem(xr.DataArray(np.zeros((3, 3)), dims=("y", "x"), coords=g.coords))
    Traceback (most recent call last):
    ...
    ValueError: dem has no CRS, so its cell size in metres is unknown. Declare it, e.g. `downscale.grid.set_crs(dem, 'EPSG:32632')` for a projected grid in metres or `downscale.grid.set_crs(dem, 'EPSG:4326')` for lat/lon.
    """
    if isinstance(dem, xr.Dataset):
        variables = list(dem.data_vars)
        if len(variables) != 1:
            raise ValueError(
                f"{name} must be a DataArray of elevation; got a Dataset with variables {variables}. "
                f"Pass one of them, e.g. `{name}['{variables[0] if variables else 'elevation'}']`."
            )
        dem = dem[variables[0]]
    if not isinstance(dem, xr.DataArray):
        raise TypeError(f"{name} must be an xarray DataArray of elevation (m), got {type(dem).__name__}.")
    grid_module.check_grid(dem, name=name)
    if dem.ndim != 2:
        extra = [d for d in dem.dims if d not in ("y", "x")]
        raise ValueError(
            f"{name} must be 2-D with dims ('y', 'x'); it has dims {dem.dims}. "
            f"Select one field, e.g. `{name}.isel({extra[0]}=0)`."
        )
    crs = grid_module.get_crs(dem)
    if crs is None:
        x_units = str(dem["x"].attrs.get("units", "")).lower()
        if x_units in _DEGREE_UNITS:
            raise ValueError(
                f"{name} has no CRS and its x coordinate is in '{x_units}', so it cannot be used as "
                f"metres. Declare the CRS, e.g. `downscale.grid.set_crs({name}, 'EPSG:4326')`."
            )
        raise ValueError(
            f"{name} has no CRS, so its cell size in metres is unknown. Declare it, e.g. "
            f"`downscale.grid.set_crs({name}, 'EPSG:32632')` for a projected grid in metres or "
            f"`downscale.grid.set_crs({name}, 'EPSG:4326')` for lat/lon."
        )
    grid_module.cell_size_metres(dem)  # raises for a projected CRS whose unit is not the metre
    units = dem.attrs.get("units")
    if units is not None and str(units).strip().lower() not in _METRE_UNITS:
        raise ValueError(
            f"{name} has units {units!r}; elevation must be in metres. Convert it first, e.g. "
            f"`{name} = ({name} * 0.3048).assign_attrs(units='m')` for feet."
        )
    dem = dem.transpose("y", "x")
    if dem.dtype != np.float64:
        dem = dem.astype(np.float64)
    return dem


def _steps_metres(dem):
    """Signed distance in metres between neighbouring rows (northward) and columns (eastward).

    Returns ``(step_north, step_east)``: a scalar and a ``(ny, 1)`` array. A positive
    ``step_north`` means the row index runs northward.
    """
    dy_m, dx_m = grid_module.cell_size_metres(dem)
    sign_y = np.sign(grid_module.grid_step(dem["y"].values, "'y'"))
    sign_x = np.sign(grid_module.grid_step(dem["x"].values, "'x'"))
    return float(sign_y * dy_m[0]), (sign_x * dx_m)[:, None]


# --------------------------------------------------------------------------- finite differences


def _shifted(z, axis):
    """Neighbours of every cell before and after it along ``axis``, NaN beyond the edges."""
    before = np.full_like(z, np.nan)
    after = np.full_like(z, np.nan)
    if axis == 0:
        before[1:] = z[:-1]
        after[:-1] = z[1:]
    else:
        before[:, 1:] = z[:, :-1]
        after[:, :-1] = z[:, 1:]
    return before, after


def _differences(z, axis, h, second=True):
    """First (and second) derivative along ``axis`` with spacing ``h``, one-sided next to gaps.

    A missing neighbour is replaced by ``2 * z - other``, the linear extrapolation
    through the cell, so the central difference becomes one-sided and the second
    derivative zero; a cell with both neighbours missing gets zero.
    """
    has_gaps = bool(np.isnan(z).any())
    if not has_gaps:
        first = np.empty_like(z)
        second_d = np.zeros_like(z) if second else None
        inner = (slice(1, -1), slice(None)) if axis == 0 else (slice(None), slice(1, -1))
        ahead = (slice(2, None), slice(None)) if axis == 0 else (slice(None), slice(2, None))
        behind = (slice(None, -2), slice(None)) if axis == 0 else (slice(None), slice(None, -2))
        h_inner = h if np.ndim(h) == 0 or axis == 1 else h
        n = z.shape[axis]
        if n < 2:
            first[...] = 0.0
            return first, second_d
        first[inner] = (z[ahead] - z[behind]) / (2.0 * _take(h_inner, inner, axis))
        head = (slice(0, 1), slice(None)) if axis == 0 else (slice(None), slice(0, 1))
        head_next = (slice(1, 2), slice(None)) if axis == 0 else (slice(None), slice(1, 2))
        tail = (slice(-1, None), slice(None)) if axis == 0 else (slice(None), slice(-1, None))
        tail_prev = (slice(-2, -1), slice(None)) if axis == 0 else (slice(None), slice(-2, -1))
        first[head] = (z[head_next] - z[head]) / _take(h, head, axis)
        first[tail] = (z[tail] - z[tail_prev]) / _take(h, tail, axis)
        if second:
            second_d[inner] = (z[ahead] - 2.0 * z[inner] + z[behind]) / _take(h, inner, axis) ** 2
        return first, second_d
    before, after = _shifted(z, axis)
    missing_before = np.isnan(before)
    missing_after = np.isnan(after)
    before = np.where(missing_before, np.where(missing_after, z, 2.0 * z - after), before)
    after = np.where(missing_after, 2.0 * z - before, after)
    first = np.where(np.isnan(z), np.nan, (after - before) / (2.0 * h))
    second_d = (after - 2.0 * z + before) / h**2 if second else None
    return first, second_d


def _take(h, index, axis):
    """The part of the spacing ``h`` (scalar or (ny, 1)) that matches a slice of the grid."""
    if np.ndim(h) == 0 or axis == 1:
        return h
    return h[index[0]]


def _smooth_121(values, axis):
    """NaN-aware [1, 2, 1] / 4 smoothing along ``axis`` (Horn's weights); NaN cells stay NaN."""
    before, after = _shifted(values, axis)
    if not np.isnan(values).any():
        # Only the edges miss a neighbour: there the weights are [2, 1] / 3.
        out = np.empty_like(values)
        inner = (slice(1, -1), slice(None)) if axis == 0 else (slice(None), slice(1, -1))
        out[inner] = 0.25 * before[inner] + 0.5 * values[inner] + 0.25 * after[inner]
        for edge, other in ((0, 1), (-1, -2)):
            e = (edge, slice(None)) if axis == 0 else (slice(None), edge)
            o = (other, slice(None)) if axis == 0 else (slice(None), other)
            if values.shape[axis] > 1:
                out[e] = (2.0 * values[e] + values[o]) / 3.0
            else:
                out[e] = values[e]
        return out
    valid_before = np.isfinite(before)
    valid_after = np.isfinite(after)
    total = 2.0 * values + np.where(valid_before, before, 0.0) + np.where(valid_after, after, 0.0)
    weight = 2.0 + valid_before + valid_after
    return total / weight


def _local_kernels():
    """The compiled 3 x 3 kernels as a dict, or None without numba (then numpy code runs)."""
    try:
        from . import _kernels
    except ImportError:  # pragma: no cover - numba comes with shap
        return None
    return {
        "terrain": _kernels.terrain,
        "roughness": _kernels.roughness,
        "integral": _kernels.integral,
        "position": _kernels.position,
    }


class _Derivatives:
    """Lazily computed partial derivatives of a DEM in metres (east = x, north = y)."""

    def __init__(self, dem, method="horn", dtype=FEATURE_DTYPE):
        if method not in ("horn", "central"):
            raise ValueError(f"method must be 'horn' or 'central', got {method!r}.")
        self.dtype = _feature_dtype(dtype)
        self.dem = dem
        self.z = np.asarray(dem.values, dtype=np.float64)
        self.method = method
        self.step_north, self.step_east = _steps_metres(dem)
        self._cache = {}

    @property
    def nan(self):
        """Where the DEM is missing."""
        if "nan" not in self._cache:
            self._cache["nan"] = np.isnan(self.z)
        return self._cache["nan"]

    def _x(self):
        if "x" not in self._cache:
            self._cache["x"] = _differences(self.z, 1, self.step_east)
        return self._cache["x"]

    def _y(self):
        if "y" not in self._cache:
            self._cache["y"] = _differences(self.z, 0, self.step_north)
        return self._cache["y"]

    @property
    def p(self):
        """dz/d(east), central differences."""
        return self._x()[0]

    @property
    def q(self):
        """dz/d(north), central differences."""
        return self._y()[0]

    @property
    def r(self):
        return self._x()[1]

    @property
    def t(self):
        return self._y()[1]

    @property
    def s(self):
        if "s" not in self._cache:
            self._cache["s"] = _differences(self.p, 0, self.step_north, second=False)[0]
        return self._cache["s"]

    @property
    def gradient(self):
        """(dz/d(east), dz/d(north)) used for slope and aspect: Horn's 3 x 3 weights or central."""
        if "gradient" not in self._cache:
            if self.method == "horn":
                self._cache["gradient"] = (_smooth_121(self.p, 0), _smooth_121(self.q, 1))
            else:
                self._cache["gradient"] = (self.p, self.q)
        return self._cache["gradient"]

    def terrain(self):
        """``tan_slope, northness, eastness, profile, plan`` arrays (numba kernel, else numpy)."""
        if "terrain" not in self._cache:
            kernels = _local_kernels() if USE_NUMBA else None
            if kernels is not None:
                step_east = np.ascontiguousarray(np.broadcast_to(self.step_east, (self.z.shape[0], 1))[:, 0])
                self._cache["terrain"] = kernels["terrain"](
                    np.ascontiguousarray(self.z),
                    float(self.step_north),
                    step_east,
                    self.method == "horn",
                    self.dtype,
                )
            else:
                self._cache["terrain"] = tuple(
                    a.astype(self.dtype, copy=False) for a in self._terrain_numpy()
                )
        return self._cache["terrain"]

    def _terrain_numpy(self):
        gx, gy = self.gradient
        magnitude = np.hypot(gx, gy)
        flat = ~(magnitude > 1e-12)
        with np.errstate(invalid="ignore", divide="ignore"):
            north = np.where(flat, 0.0, -gy / magnitude)
            east = np.where(flat, 0.0, -gx / magnitude)
        p, q, r, s, t = self.p, self.q, self.r, self.s, self.t
        p2, q2 = p * p, q * q
        gradient2 = p2 + q2
        level = ~(gradient2 > 1e-20)
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = -(p2 * r + 2.0 * p * q * s + q2 * t) / (gradient2 * (1.0 + gradient2) ** 1.5)
            plan = -(q2 * r - 2.0 * p * q * s + p2 * t) / gradient2**1.5
        profile[level] = 0.0
        plan[level] = 0.0
        for values in (magnitude, north, east, profile, plan):
            values[self.nan] = np.nan
        return magnitude, north, east, profile, plan, np.degrees(np.arctan(magnitude))

    @property
    def tan_slope(self):
        return self.terrain()[0]


def _feature_dtype(dtype):
    """The numpy scalar type of a feature ``dtype``: float32 or float64, else a clear error."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        kind = None
    if kind not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(
            f"dtype must be float32 or float64 (the dtype of the terrain features), got {dtype!r}; "
            f"pass dtype=np.float64 for full precision or leave the float32 default."
        )
    return kind.type


def _wrap(values, dem, name, long_name, units, dtype=None, **attrs):
    """Put a feature array on the DEM's grid with CF attributes and the DEM's CRS, as ``dtype`` if given."""
    if dtype is not None:
        values = np.asarray(values).astype(dtype, copy=False)
    out = xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": dem["y"], "x": dem["x"]},
        name=name,
        attrs={"long_name": long_name, "units": units, **attrs},
    )
    if "spatial_ref" in dem.coords:
        # Reuse the DEM's grid mapping: much cheaper than writing the CRS again for every feature.
        out = out.assign_coords(spatial_ref=dem["spatial_ref"])
        out.attrs["grid_mapping"] = "spatial_ref"
        return out
    crs = grid_module.get_crs(dem)
    return grid_module.set_crs(out, crs) if crs is not None else out


def _as_derivatives(dem, method="horn", dtype=FEATURE_DTYPE):
    if isinstance(dem, _Derivatives):
        return dem
    return _Derivatives(check_dem(dem), method=method, dtype=dtype)


# --------------------------------------------------------------------------- slope, aspect, curvature


def slope(dem, method: str = "horn", dtype=FEATURE_DTYPE) -> xr.DataArray:
    """Slope angle in degrees (0 flat, 90 vertical).

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation (m) on a grid with a CRS.
    method : {"horn", "central"}
        ``"horn"``: Horn's (1981) 3 x 3 weights, as in GDAL, ArcGIS and xarray-spatial;
        ``"central"``: plain central differences (``numpy.gradient``).
    dtype : float32 or float64
        dtype of the result (computed in float64 either way; see :data:`FEATURE_DTYPE`).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((5, 5), 100.0, crs="EPSG:32632")
    >>> plane = xr.DataArray(np.broadcast_to(g.x.values, (5, 5)) * 0.1, dims=("y", "x"), coords=g.coords)
    >>> float(np.round(slope(ds.grid.set_crs(plane, "EPSG:32632"))[2, 2], 4))   # atan(0.1)
    5.7106
    """
    d = _as_derivatives(dem, method, dtype)
    values = d.terrain()[5]
    return _wrap(values, d.dem, "slope", "slope angle", "degree", method=method)


def _aspect_components(d):
    return d.terrain()[1], d.terrain()[2]


def northness(dem, method: str = "horn", dtype=FEATURE_DTYPE) -> xr.DataArray:
    """Cosine of the aspect: 1 on slopes facing north, -1 facing south, 0 facing east/west or flat.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((4, 4), 100.0, crs="EPSG:32632")
    >>> z = xr.DataArray(-np.broadcast_to(g.y.values[:, None], (4, 4)), dims=("y", "x"), coords=g.coords)
    >>> float(northness(ds.grid.set_crs(z, "EPSG:32632"))[1, 1])   # z falls northward: faces north
    1.0
    """
    d = _as_derivatives(dem, method, dtype)
    return _wrap(
        _aspect_components(d)[0],
        d.dem,
        "northness",
        "northness: cosine of the aspect (1 = facing north)",
        "1",
    )


def eastness(dem, method: str = "horn", dtype=FEATURE_DTYPE) -> xr.DataArray:
    """Sine of the aspect: 1 on slopes facing east, -1 facing west, 0 facing north/south or flat."""
    d = _as_derivatives(dem, method, dtype)
    return _wrap(
        _aspect_components(d)[1], d.dem, "eastness", "eastness: sine of the aspect (1 = facing east)", "1"
    )


def aspect(dem, method: str = "horn", dtype=FEATURE_DTYPE) -> xr.DataArray:
    """Aspect: compass direction the slope faces (downslope), degrees clockwise from north in [0, 360).

    Flat cells are NaN. As a covariate prefer :func:`northness` and :func:`eastness`,
    which are continuous (aspect jumps from 359 to 0 at north).
    """
    d = _as_derivatives(dem, method, dtype)
    north, east = _aspect_components(d)
    flat = ~(d.tan_slope > 1e-12)
    with np.errstate(invalid="ignore"):
        values = np.mod(np.degrees(np.arctan2(east, north)), 360.0)
    values[flat | d.nan] = np.nan
    return _wrap(values, d.dem, "aspect", "aspect: downslope direction clockwise from north", "degree")


def curvature(dem, dtype=FEATURE_DTYPE) -> tuple[xr.DataArray, xr.DataArray]:
    """Profile and plan curvature (1/m), from Evans/Zevenbergen-Thorne second derivatives.

    With ``p, q`` the first and ``r, s, t`` the second partial derivatives of
    elevation along east and north (Florinsky 2016, eqs. 2.12 and 2.6)::

        profile = -(p**2 r + 2 p q s + q**2 t) / ((p**2 + q**2) (1 + p**2 + q**2) ** 1.5)
        plan    = -(q**2 r - 2 p q s + p**2 t) / (p**2 + q**2) ** 1.5

    The profile curvature is the curvature of the surface along the slope
    line; the plan curvature is the curvature of the contour line. Both are
    positive on convex ground (ridges, tops) and negative on concave ground
    (valleys, hollows), and 0 on flat cells, where they are undefined.

    Returns
    -------
    profile, plan : xarray.DataArray

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((21, 21), 10.0, origin=(-105.0, -105.0), crs="EPSG:32632")
    >>> x, y = np.meshgrid(g.x.values, g.y.values)
    >>> bowl = ds.grid.set_crs(xr.DataArray(1e-3 * (x**2 + y**2) / 2, dims=("y", "x"), coords=g.coords), "EPSG:32632")
    >>> profile, plan = curvature(bowl)
    >>> float(plan[10, 15])   # contour circle of radius 50 m, concave: -1 / 50
    -0.02
    """
    d = _as_derivatives(dem, dtype=dtype)
    _, _, _, profile, plan, _ = d.terrain()
    return (
        _wrap(profile, d.dem, "profile_curvature", "profile curvature (along the slope; > 0 convex)", "m-1"),
        _wrap(plan, d.dem, "plan_curvature", "plan curvature (of the contour; > 0 convex)", "m-1"),
    )


# --------------------------------------------------------------------------- neighbourhood statistics


def _box_mean(values, half_rows, half_cols):
    """NaN-aware mean over a (2 half_rows + 1) x (2 half_cols + 1) window, shrunk at the edges."""
    size = (2 * half_rows + 1, 2 * half_cols + 1)
    gaps = np.isnan(values)
    filled = np.where(gaps, 0.0, values) if gaps.any() else values
    total = ndimage.uniform_filter(filled, size=size, mode="constant", cval=0.0)
    if gaps.any():
        count = ndimage.uniform_filter((~gaps).astype(np.float64), size=size, mode="constant", cval=0.0)
    else:
        # Without gaps the count is separable: the product of the 1-D window lengths inside the grid.
        count = np.outer(
            _window_fraction(values.shape[0], half_rows), _window_fraction(values.shape[1], half_cols)
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean[gaps] = np.nan
    return mean


def _window_fraction(n, half):
    """Fraction of a centred 1-D window of 2 half + 1 cells that lies inside an axis of n cells."""
    index = np.arange(n)
    low = np.maximum(index - half, 0)
    high = np.minimum(index + half, n - 1)
    return (high - low + 1) / (2 * half + 1)


def _radius_in_cells(dem, radius):
    """Half-widths (rows, cols) in cells of a window of ``radius`` metres, at least one cell."""
    dy_m, dx_m = grid_module.cell_size_metres(dem)
    mid = dx_m.size // 2
    half_rows = int(round(radius / dy_m[mid]))
    half_cols = int(round(radius / dx_m[mid]))
    if half_rows < 1 or half_cols < 1:
        warnings.warn(
            f"TPI radius {radius:g} m is smaller than a cell ({dy_m[mid]:.4g} m x {dx_m[mid]:.4g} m); "
            f"using a 3 x 3 window instead.",
            stacklevel=3,
        )
    return max(half_rows, 1), max(half_cols, 1)


def _radius_label(radius):
    radius = float(radius)
    if radius >= 1000 and radius % 1000 == 0:
        return f"{int(radius // 1000)}km"
    return f"{radius:g}m".replace(".", "p")


def _offset(z):
    """A typical elevation, subtracted before running sums so that they keep their precision."""
    sample = z.ravel()[:: max(1, z.size // 10_000)]
    sample = sample[np.isfinite(sample)]
    return float(np.median(sample)) if sample.size else 0.0


def _summed_area(z, kernels):
    """Offset and summed-area tables of ``z``; the count table is only built when ``z`` has gaps."""
    offset = _offset(z)
    return (offset, *kernels["integral"](z, offset, bool(np.isnan(z).any())))


def tpi(dem, radius: float, dtype=FEATURE_DTYPE, _tables=None) -> xr.DataArray:
    """Topographic position index: elevation minus the mean elevation within ``radius`` metres (m).

    The neighbourhood is a square window of half-width ``radius`` (the cell
    itself included), shrunk at the grid edges and NaN-aware, computed with a
    running-sum filter so that large radii cost no more than small ones. On
    geographic grids the window's width in columns is set at the middle
    latitude of the grid. Positive on ridges and hill tops, negative in valleys.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((5, 5), 100.0, crs="EPSG:32632")
    >>> z = np.zeros((5, 5)); z[2, 2] = 9.0
    >>> peak = ds.grid.set_crs(xr.DataArray(z, dims=("y", "x"), coords=g.coords), "EPSG:32632")
    >>> float(tpi(peak, 100.0)[2, 2])   # 9 - 9 / 9
    8.0
    """
    dem = check_dem(dem)
    radius = float(radius)
    if not radius > 0:
        raise ValueError(f"The TPI radius must be a positive distance in metres, got {radius!r}.")
    half_rows, half_cols = _radius_in_cells(dem, radius)
    z = np.ascontiguousarray(dem.values)
    kernels = _local_kernels() if USE_NUMBA else None
    if kernels is not None:
        # Summed-area tables: every radius costs the same; dem_features shares them between radii.
        offset, total, count = _tables if _tables is not None else _summed_area(z, kernels)
        values = kernels["position"](z, offset, total, count, half_rows, half_cols, _feature_dtype(dtype))
    else:
        values = z - _box_mean(z, half_rows, half_cols)
    return _wrap(
        values,
        dem,
        f"tpi_{_radius_label(radius)}",
        f"topographic position index, radius {radius:g} m",
        "m",
        dtype=_feature_dtype(dtype),
        radius=radius,
    )


def roughness(dem, dtype=FEATURE_DTYPE) -> xr.DataArray:
    """Terrain roughness: standard deviation of elevation in the 3 x 3 neighbourhood (m), NaN-aware.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((3, 3), 100.0, crs="EPSG:32632")
    >>> z = ds.grid.set_crs(xr.DataArray(np.arange(9.0).reshape(3, 3), dims=("y", "x"), coords=g.coords), "EPSG:32632")
    >>> round(float(roughness(z)[1, 1]), 4)   # std of 0..8
    2.582
    """
    dem = check_dem(dem)
    z = np.ascontiguousarray(dem.values)
    kernels = _local_kernels() if USE_NUMBA else None
    if kernels is not None:
        values = kernels["roughness"](z, _feature_dtype(dtype))
        return _wrap(
            values, dem, "roughness", "terrain roughness: standard deviation of elevation in 3 x 3 cells", "m"
        )
    # Remove a global offset first so that E[z^2] - E[z]^2 does not lose precision at high elevations.
    offset = float(np.nanmean(z)) if np.isfinite(z).any() else 0.0
    centred = z - offset
    mean = _box_mean(centred, 1, 1)
    mean_square = _box_mean(centred * centred, 1, 1)
    values = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))
    return _wrap(
        values,
        dem,
        "roughness",
        "terrain roughness: standard deviation of elevation in 3 x 3 cells",
        "m",
        dtype=_feature_dtype(dtype),
    )


# --------------------------------------------------------------------------- flow and wetness


def _flow_kernels():
    """The compiled D8 routing (depressions breached) and accumulation kernels."""
    try:
        from . import _kernels
    except ImportError as error:  # numba comes with shap, a dependency of downscale
        raise ImportError(
            "The topographic wetness index needs numba (installed with shap): `pip install numba`."
        ) from error
    return _kernels.route, _kernels.accumulate_rows


def _row_cell_area(dem):
    """Area (m2) of the cells of every row, a 1-D array: :func:`downscale.grid.cell_area` of one column."""
    column = dem.isel(x=slice(0, 2)) if dem.sizes["x"] >= 2 else dem
    return np.ascontiguousarray(grid_module.cell_area(column).values[:, 0], dtype=np.float64)


def _contributing_area(d, started=None):
    """Flat array of the upslope area of every cell of ``d.dem`` (NaN on missing cells), compiled kernels.

    ``d`` is the DEM's :class:`_Derivatives` (its elevations and steps in metres); ``started`` the
    result of :func:`downscale.covariates._kernels.start_route` when the routing's parallel first half
    has already run.
    """
    from . import _kernels

    if started is None:
        started = _kernels.start_route(d.z, d.step_east, d.step_north)
    receiver = _kernels.finish_route(*started)
    return _kernels.accumulate_rows(_row_cell_area(d.dem), receiver, started[0])


def flow_accumulation(dem) -> xr.DataArray:
    """Upslope contributing area (m2) of every cell by D8 routing with depressions breached.

    Each cell drains to its steepest downhill neighbour (D8: the largest drop
    over distance, diagonals at their true length, also on geographic grids).
    Cells on the grid edge or next to missing cells (the sea, voids) drain out
    of the grid. A depression drains through its lowest pass: the basins of
    the pits are joined outward from the outlets in order of spill height, and
    the steepest path from the pass down to the pit is reversed (a breach), so
    every cell reaches an outlet and no depression swallows its flow. The
    contributing area includes the cell itself.

    Unlike filling (priority-flood), breaching keeps the steepest-descent
    directions inside depressions instead of spreading them across a filled
    flat; the two agree wherever the DEM has no depressions.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((3, 5), 10.0, crs="EPSG:32632")
    >>> z = np.array([[9.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], [9.0] * 5])
    >>> valley = ds.grid.set_crs(xr.DataArray(z, dims=("y", "x"), coords=g.coords), "EPSG:32632")
    >>> flow_accumulation(valley).values[1].tolist()   # the valley drains west; edge cells drain out
    [400.0, 300.0, 200.0, 100.0, 100.0]
    """
    dem = check_dem(dem)
    _flow_kernels()  # says how to install numba when it is missing
    total = _contributing_area(_Derivatives(dem)).reshape(dem.shape)
    return _wrap(total, dem, "flow_accumulation", "upslope contributing area (D8)", "m2")


def twi(dem, method: str = "horn", dtype=FEATURE_DTYPE, _area=None) -> xr.DataArray:
    """Topographic wetness index ``ln(a / tan(slope))`` (Beven and Kirkby 1979).

    ``a`` is the specific catchment area: the upslope contributing area
    (:func:`flow_accumulation`) per unit contour width, taken as the cell
    width. ``tan(slope)`` is floored at 0.001 so that flat cells get a large,
    finite value. High in valley floors and hollows, low on ridges.
    """
    d = _as_derivatives(dem, method, dtype)
    _flow_kernels()  # says how to install numba when it is missing
    from . import _kernels

    row_area = _row_cell_area(d.dem)
    # dem_features passes the contributing area, computed in a thread next to the other features.
    area = _area if _area is not None else _contributing_area(d)
    values = _kernels.wetness(
        area, np.sqrt(row_area), np.ascontiguousarray(d.tan_slope), MIN_TAN_SLOPE, d.dtype
    )
    return _wrap(values, d.dem, "twi", "topographic wetness index ln(a / tan(slope)), a in m", "1")


# --------------------------------------------------------------------------- illumination


def solar_position(time, lat, lon):
    """Solar zenith and azimuth angles (degrees) at a UTC time, NOAA's low-accuracy formulas (~0.5 degree).

    Parameters
    ----------
    time : anything :class:`numpy.datetime64` accepts, in UTC
    lat, lon : float or array, degrees

    Returns
    -------
    zenith, azimuth : float or array; azimuth clockwise from north

    Examples
    --------
    >>> zenith, azimuth = solar_position("2024-06-21T12:00", 0.0, 0.0)
    >>> round(float(zenith))   # at noon on the solstice the sun stands 23.4 degrees north of the equator
    23
    """
    when = np.datetime64(time, "s")
    year_start = when.astype("datetime64[Y]")
    day_of_year = (when - year_start.astype("datetime64[s]")).astype(float) / 86400.0  # 0-based, fractional
    hours = (day_of_year % 1.0) * 24.0
    days_in_year = float(
        ((year_start + 1).astype("datetime64[D]") - year_start.astype("datetime64[D]")).astype(int)
    )
    gamma = 2.0 * np.pi / days_in_year * (np.floor(day_of_year) + (hours - 12.0) / 24.0)
    equation_of_time = 229.18 * (
        0.000075
        + 0.001868 * np.cos(gamma)
        - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma)
        - 0.040849 * np.sin(2 * gamma)
    )
    declination = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
        - 0.002697 * np.cos(3 * gamma)
        + 0.00148 * np.sin(3 * gamma)
    )
    lat_r = np.deg2rad(np.asarray(lat, dtype=float))
    true_solar_minutes = hours * 60.0 + equation_of_time + 4.0 * np.asarray(lon, dtype=float)
    hour_angle = np.deg2rad(true_solar_minutes / 4.0 - 180.0)
    cos_zenith = np.sin(lat_r) * np.sin(declination) + np.cos(lat_r) * np.cos(declination) * np.cos(
        hour_angle
    )
    zenith = np.arccos(np.clip(cos_zenith, -1.0, 1.0))
    # Azimuth clockwise from north, from the east and north components of the sun direction.
    east = -np.cos(declination) * np.sin(hour_angle)
    north = np.cos(lat_r) * np.sin(declination) - np.sin(lat_r) * np.cos(declination) * np.cos(hour_angle)
    azimuth = np.mod(np.degrees(np.arctan2(east, north)), 360.0)
    return np.degrees(zenith), azimuth


def _grid_centre_lonlat(dem):
    import pyproj

    x = float(np.mean(dem["x"].values[[0, -1]]))
    y = float(np.mean(dem["y"].values[[0, -1]]))
    crs = grid_module.get_crs(dem)
    if crs.is_geographic:
        return x, y
    transformer = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = transformer.transform(x, y)
    return float(lon), float(lat)


def solar_illumination(dem, time, method: str = "horn", dtype=FEATURE_DTYPE) -> xr.DataArray:
    """Illumination proxy: cosine of the sun's incidence angle on the terrain at a UTC time, floored at 0.

    ``cos(i) = cos(Z) cos(S) + sin(Z) sin(S) cos(A_sun - A)`` with ``Z`` the
    solar zenith angle, ``A_sun`` its azimuth, ``S`` the slope and ``A`` the
    aspect. Self-shaded slopes get 0; cast shadows are not modelled. The sun
    position is computed once at the grid centre, which is adequate for
    regional grids (the sun moves by about 1 degree per 100 km). The whole
    grid is 0, with a warning, when the sun is below the horizon.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((3, 3), 0.01, crs="EPSG:4326")
    >>> flat = ds.grid.set_crs(xr.DataArray(np.zeros((3, 3)), dims=("y", "x"), coords=g.coords), "EPSG:4326")
    >>> lit = solar_illumination(flat, "2024-03-20T12:00")
    >>> bool(lit.values.min() > 0.99)   # flat ground near the equator at the equinox noon
    True
    """
    d = _as_derivatives(dem, method, dtype)
    lon, lat = _grid_centre_lonlat(d.dem)
    zenith, sun_azimuth = solar_position(time, lat, lon)
    zenith_r, azimuth_r = np.deg2rad(float(zenith)), np.deg2rad(float(sun_azimuth))
    north, east = _aspect_components(d)
    tan_s = d.tan_slope
    cos_s = 1.0 / np.sqrt(1.0 + tan_s * tan_s)
    sin_s = tan_s * cos_s
    values = np.cos(zenith_r) * cos_s + np.sin(zenith_r) * sin_s * (
        np.cos(azimuth_r) * north + np.sin(azimuth_r) * east
    )
    values = np.maximum(values, 0.0)
    values[d.nan] = np.nan
    if zenith >= 90.0:
        warnings.warn(
            f"The sun is below the horizon at {time} (zenith {float(zenith):.1f} degrees at the grid "
            f"centre); the illumination is 0 everywhere. Pick a daytime hour (UTC).",
            stacklevel=2,
        )
    return _wrap(
        values,
        d.dem,
        "solar_illumination",
        f"cosine of the solar incidence angle at {np.datetime64(time, 's')} UTC (0 = shaded)",
        "1",
        dtype=d.dtype,
        solar_zenith=float(zenith),
        solar_azimuth=float(sun_azimuth),
    )


# --------------------------------------------------------------------------- all features


def dem_features(
    dem,
    features=None,
    tpi_radii=DEFAULT_TPI_RADII,
    solar_time=None,
    method: str = "horn",
    dtype=FEATURE_DTYPE,
) -> xr.Dataset:
    """All terrain features of ``dem`` as one Dataset on the DEM's grid.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation (m) with a CRS (projected in metres, or geographic).
    features : sequence of str, optional
        A subset of :data:`DEM_FEATURES`. Default: elevation, slope, northness,
        eastness, profile and plan curvature, TPI at every radius, roughness
        and TWI, plus ``"solar"`` when ``solar_time`` is given.
    tpi_radii : sequence of float
        Radii (metres) of the topographic position index; one variable each, named ``tpi_1km``, ...
    solar_time : optional
        UTC time of the illumination proxy (see :func:`solar_illumination`).
    method : {"horn", "central"}
        Gradient used for slope, aspect and illumination.
    dtype : float32 or float64
        dtype of the derived features, computed in float64 either way (:data:`FEATURE_DTYPE`, float32
        by default, as gdaldem and xarray-spatial store them). ``elevation`` is the DEM's own array.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(40, 40), factor=10)
    >>> X = dem_features(scene.dem, tpi_radii=(5000.0,))
    >>> list(X.data_vars)
    ['elevation', 'slope', 'northness', 'eastness', 'profile_curvature', 'plan_curvature', 'tpi_5km', 'roughness', 'twi']
    """
    dem = check_dem(dem)
    if features is None:
        features = list(DEFAULT_FEATURES) + (["solar"] if solar_time is not None else [])
    elif isinstance(features, str):
        features = [features]
    unknown = [f for f in features if f not in DEM_FEATURES]
    if unknown:
        raise ValueError(f"Unknown DEM feature(s) {unknown}; choose from {list(DEM_FEATURES)}.")
    if "solar" in features and solar_time is None:
        raise ValueError("The 'solar' feature needs a time: pass solar_time='2024-06-21T10:30' (UTC).")
    d = _Derivatives(dem, method=method, dtype=dtype)
    if "twi" not in features:
        out = _all_features(dem, d, features, tpi_radii, solar_time)
    else:
        _flow_kernels()  # says how to install numba when it is missing
        from . import _kernels

        # The routing's first half (receivers, basins) runs in parallel; its second half is
        # sequential and releases the GIL, so it runs in a thread while the other features'
        # kernels take one thread fewer, until it is done: every core stays busy.
        started = _kernels.start_route(d.z, d.step_east, d.step_north)
        others = [f for f in features if f != "twi"]
        with ThreadPoolExecutor(max_workers=1) as routing:
            area = routing.submit(_contributing_area, d, started=started)
            with _numba_threads_while(area) as share:
                out = _all_features(dem, d, others, tpi_radii, solar_time, before_each=share)
            out["twi"] = twi(d, _area=area.result())
        out = {name: out[name] for name in _feature_names(features, tpi_radii)}
    result = xr.Dataset(out)
    if "spatial_ref" in result.coords:  # every feature carries the DEM's grid mapping already
        return result
    crs = grid_module.get_crs(dem)
    return grid_module.set_crs(result, crs)


def _feature_names(features, tpi_radii):
    """Names of the variables of ``dem_features`` for ``features``, in order."""
    names = []
    for feature in features:
        if feature == "tpi":
            names += [f"tpi_{_radius_label(r)}" for r in tpi_radii]
        elif feature == "solar":
            names.append("solar_illumination")
        else:
            names.append(feature)
    return names


@contextlib.contextmanager
def _numba_threads_while(future):
    """Yield a function that gives this thread's numba kernels one thread fewer while ``future`` runs.

    :func:`_all_features` calls it before each kernel, so the kernels that start after the future
    is done use every thread again. The thread count is restored on leaving the block.
    """
    import numba

    threads = numba.get_num_threads()

    def share():
        numba.set_num_threads(threads if future.done() else max(1, threads - 1))

    try:
        yield share
    finally:
        numba.set_num_threads(threads)


def _all_features(dem, d, features, tpi_radii, solar_time, before_each=lambda: None):
    """The features of ``dem_features`` in the order asked; ``before_each()`` is called before each kernel."""
    out = {}
    curvatures = None
    for feature in features:
        before_each()
        if feature == "elevation":
            attrs = {k: v for k, v in dem.attrs.items() if k in ("standard_name",)}
            # The DEM's own array, as xarray shares a variable's memory when it goes into a Dataset.
            out["elevation"] = _wrap(dem.values, dem, "elevation", "elevation", "m", **attrs)
        elif feature == "slope":
            out["slope"] = slope(d)
        elif feature == "northness":
            out["northness"] = northness(d)
        elif feature == "eastness":
            out["eastness"] = eastness(d)
        elif feature == "aspect":
            out["aspect"] = aspect(d)
        elif feature in ("profile_curvature", "plan_curvature"):
            if curvatures is None:
                curvatures = dict(zip(("profile_curvature", "plan_curvature"), curvature(d), strict=True))
            out[feature] = curvatures[feature]
        elif feature == "tpi":
            kernels = _local_kernels() if USE_NUMBA else None
            z = np.ascontiguousarray(dem.values)
            tables = _summed_area(z, kernels) if kernels is not None else None
            for radius in tpi_radii:
                before_each()
                da = tpi(dem.copy(data=z), radius, dtype=d.dtype, _tables=tables)
                out[da.name] = da
        elif feature == "roughness":
            out["roughness"] = roughness(dem, dtype=d.dtype)
        elif feature == "twi":
            out["twi"] = twi(d)
        elif feature == "solar":
            out["solar_illumination"] = solar_illumination(d, solar_time)
    return out
