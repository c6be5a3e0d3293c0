"""Make any coarse input usable with a given fine grid: conservative remap onto nested blocks, time matching.

Every model in the package works on a *nested* pair: each coarse cell is
exactly a ``factor x factor`` block of fine cells (see
:func:`downscale.grid.nesting_factor`). Real inputs rarely nest: a 0.25 degree
lat/lon product and a 1 km projected grid share neither CRS nor cell edges.
:func:`to_nested` remaps such a field onto the coarse blocks of the fine grid
with exact area-overlap weights, and :func:`match_times` pairs the time steps
of two series.

How the weights keep the mean
-----------------------------
Each target block ``T`` gets ``value_T = sum_s A_Ts v_s / sum_s A_Ts``, where
``A_Ts`` is the area of the overlap of source cell ``s`` with ``T`` (NaN
source cells left out) and ``C_T = sum_s A_Ts`` is the block's *covered area*.
Then ``sum_T C_T value_T = sum_Ts A_Ts v_s``: the covered-area-weighted mean of
the output equals the area-weighted mean of the source over the common area,
exactly, whatever the geometry (up to float rounding). Areas are measured the
way the fine grid measures them: in the fine grid's own plane for projected
grids (equal-weight block means, as in :func:`downscale.grid.block_mean`) and
on the sphere for geographic grids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from . import grid as grid_module

__all__ = ["cell_polygons", "match_times", "to_nested"]

#: Points per source cell edge when cell outlines are transformed to another CRS.
DENSIFY = 8


# ------------------------------------------------------------------ remapping


def to_nested(
    coarse,
    fine,
    factor=None,
    min_coverage: float = 0.5,
    return_fraction: bool = False,
    densify: int = DENSIFY,
):
    """Remap a coarse field conservatively onto the coarse blocks of a fine grid.

    The result lives on ``downscale.grid.coarse_grid(fine, factor)``, so it
    nests in ``fine`` and every model of the package accepts the pair. Each
    block's value is the area-weighted mean of the source cells it overlaps,
    with exact overlap areas:

    * same CRS: cells are axis-aligned rectangles, so overlaps are separable
      (1-D overlap matrices along y and x); on geographic grids the y overlap
      is measured in ``sin(latitude)``, which makes the product the exact
      spherical area;
    * different CRS: each source cell outline (``densify`` points per edge,
      transformed with pyproj) is intersected with each block (shapely), and
      the overlap area is measured in the fine grid's plane (on geographic fine
      grids, in the equal-area cylindrical plane ``(R lon, R sin lat)``).

    Because each block is normalised by its own covered area, the
    covered-area-weighted mean of the result equals the area-weighted mean of
    the source over the common area, to float rounding (see the module notes).

    Parameters
    ----------
    coarse : xarray.DataArray or xarray.Dataset
        Field(s) with dims ``(..., y, x)`` and a CRS; leading dims such as
        ``time`` are kept. NaN cells are left out and the weights of the
        others renormalised.
    fine : xarray.DataArray or xarray.Dataset
        The fine grid (only its coordinates and CRS are used).
    factor : int, optional
        Block size in fine cells. By default, the whole number that divides
        both fine grid sizes and makes the block size closest to the coarse
        field's own cell size (measured in the fine grid's CRS).
    min_coverage : float, default 0.5
        Blocks whose valid covered area is a smaller fraction of the block
        are NaN.
    return_fraction : bool
        Also return the valid covered fraction of each block.
    densify : int
        Points per source cell edge for cross-CRS outlines.

    Returns
    -------
    remapped : same type as ``coarse``, float64, on the coarse grid of ``fine``
    fraction : xarray.DataArray, only when ``return_fraction``

    Notes
    -----
    When ``coarse`` already nests in ``fine`` (and ``factor`` is not given or
    agrees), it is returned unchanged with coordinates snapped to the block
    centres. A geographic source is brought to the longitude convention of
    the fine grid first: a global field is rolled so that its seam lies
    opposite the fine grid (0..360 and -180..180 sources give the same
    result), a regional one is shifted by 360 degrees when that makes it
    cover the fine grid.

    Examples
    --------
    A 2 km field shifted by half a cell onto 2 km blocks of a 1 km grid: each
    block is half of one source cell and half of its neighbour.

    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> fine = ds.grid.make_grid((4, 4), 1000.0, crs="EPSG:32632")
    >>> g = ds.grid.make_grid((2, 3), 2000.0, origin=(-1000.0, 0.0), crs="EPSG:32632")
    >>> coarse = xr.DataArray([[0.0, 2.0, 6.0], [0.0, 2.0, 6.0]], dims=("y", "x"), coords=g.coords)
    >>> ds.align.to_nested(coarse, fine).values.tolist()
    [[1.0, 4.0], [1.0, 4.0]]
    """
    grid_module.check_grid(coarse, name="coarse")
    grid_module.check_grid(fine, name="fine")
    if not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage must be between 0 and 1, got {min_coverage!r}.")
    crs_coarse, crs_fine = grid_module.get_crs(coarse), grid_module.get_crs(fine)
    if (crs_coarse is None) != (crs_fine is None):
        which, other = ("coarse", "fine") if crs_coarse is None else ("fine", "coarse")
        known = grid_module._crs_name(crs_fine if crs_coarse is None else crs_coarse)
        unlabelled = coarse if crs_coarse is None else fine
        if _looks_like_degrees(unlabelled) and known != "EPSG:4326":
            hint = f"`downscale.grid.set_crs({which}, 'EPSG:4326')` if its coordinates are lon/lat degrees"
        else:
            hint = f"`downscale.grid.set_crs({which}, '{known}')` if it is the same"
        raise ValueError(
            f"The {which} grid has no CRS while the {other} grid is in {known}, so they cannot be "
            f"matched. Declare it, e.g. {hint}."
        )
    if crs_coarse is not None:
        _check_coordinates_fit_crs(coarse, crs_coarse, "coarse")
        _check_coordinates_fit_crs(fine, crs_fine, "fine")
    if crs_coarse is not None and crs_coarse.is_geographic:
        coarse = _wrap_longitudes(coarse, crs_coarse, fine, crs_fine)
    same_crs = crs_coarse is None or crs_coarse.equals(crs_fine)
    _check_not_all_nan(coarse)

    if same_crs:
        try:
            nested = grid_module.nesting_factor(coarse, fine)
        except ValueError:
            nested = None
        if nested is not None and (factor is None or int(factor) == nested):
            return _snap(coarse, fine, nested, return_fraction)

    if same_crs:
        remapper = _SeparableRemap(coarse, fine, geographic=crs_fine is not None and crs_fine.is_geographic)
    else:
        remapper = _PolygonRemap(coarse, fine, crs_coarse, crs_fine, densify)
    if factor is None:
        factor = _choose_factor(remapper.source_cell_size(), fine)
    template = grid_module.coarse_grid(fine, factor)
    remapper.set_target(template)

    def one(da):
        if not {"y", "x"} <= set(da.dims):
            return da, None
        da = da.transpose(..., "y", "x")
        values, fraction = remapper.apply(np.asarray(da.values, dtype=np.float64), min_coverage)
        coords = {
            k: v
            for k, v in da.coords.items()
            if "y" not in v.dims and "x" not in v.dims and k != "spatial_ref"
        }
        coords.update(y=template["y"], x=template["x"])
        attrs = {k: v for k, v in da.attrs.items() if k != "grid_mapping"}
        out = xr.DataArray(values, dims=da.dims, coords=coords, name=da.name, attrs=attrs)
        fraction_da = xr.DataArray(
            fraction,
            dims=da.dims,
            coords=coords,
            name="covered_fraction",
            attrs={"long_name": "valid covered fraction of the block", "units": "1"},
        )
        return out, fraction_da

    if isinstance(coarse, xr.Dataset):
        pairs = {name: one(da) for name, da in coarse.data_vars.items()}
        out = xr.Dataset({k: v[0] for k, v in pairs.items()}, attrs=dict(coarse.attrs))
        fraction = xr.Dataset({k: v[1] for k, v in pairs.items() if v[1] is not None})
        finite = any(bool(np.isfinite(out[k].values).any()) for k, v in pairs.items() if v[1] is not None)
        best = max(float(fraction[k].max()) for k in fraction.data_vars)
    else:
        out, fraction = one(coarse)
        finite = bool(np.isfinite(out.values).any())
        best = float(fraction.max())
    if not finite:
        if best == 0:
            raise ValueError(
                f"The coarse field does not overlap the fine grid: coarse extent {_extent(coarse)} "
                f"({_crs_label(crs_coarse)}{_extent_in(coarse, crs_coarse, crs_fine)}), fine extent "
                f"{_extent(fine)} ({_crs_label(crs_fine)}). Check that both CRS are declared correctly."
            )
        raise ValueError(
            f"No block of the fine grid reaches min_coverage={min_coverage:g} (the best covered "
            f"fraction is {best:.3g}). Lower min_coverage or check the extents of the two grids."
        )
    if crs_fine is not None:
        out = grid_module.set_crs(out, crs_fine)
        fraction = grid_module.set_crs(fraction, crs_fine)
    return (out, fraction) if return_fraction else out


def _snap(coarse, fine, factor, return_fraction):
    """Return a nesting coarse field unchanged, with coordinates snapped to the block centres."""
    template = grid_module.coarse_grid(fine, factor)
    out = coarse.transpose(..., "y", "x") if isinstance(coarse, xr.DataArray) else coarse
    out = out.assign_coords(y=template["y"], x=template["x"])
    crs = grid_module.get_crs(fine)
    if crs is not None:
        out = grid_module.set_crs(out, crs)
    if not return_fraction:
        return out

    def fraction_of(da):
        return xr.DataArray(
            np.isfinite(da.values).astype(float), dims=da.dims, coords=da.coords, name="covered_fraction"
        )

    if isinstance(out, xr.Dataset):
        fraction = xr.Dataset(
            {k: fraction_of(v) for k, v in out.data_vars.items() if {"y", "x"} <= set(v.dims)}
        )
    else:
        fraction = fraction_of(out)
    return out, fraction


def _check_not_all_nan(coarse):
    arrays = coarse.data_vars.items() if isinstance(coarse, xr.Dataset) else [(coarse.name, coarse)]
    for name, da in arrays:
        if {"y", "x"} <= set(da.dims) and np.issubdtype(da.dtype, np.number) and bool(da.isnull().all()):
            label = f"'{name}'" if name is not None else "The coarse field"
            raise ValueError(
                f"{label} is NaN everywhere; there is nothing to remap. Check the input file and its "
                f"fill value (e.g. open it with `mask_and_scale=True`)."
            )


def _check_coordinates_fit_crs(obj, crs, name):
    """Catch a wrong CRS label early: metre-valued coordinates declared as lat/lon."""
    if not crs.is_geographic:
        return
    y = np.asarray(obj["y"].values, dtype=float)
    x = np.asarray(obj["x"].values, dtype=float)
    if np.nanmax(np.abs(y)) > 90 or np.nanmax(np.abs(x)) > 360:
        raise ValueError(
            f"The {name} grid is declared in the geographic CRS {grid_module._crs_name(crs)}, but its "
            f"coordinates (y up to {np.nanmax(np.abs(y)):.6g}, x up to {np.nanmax(np.abs(x)):.6g}) are "
            f"not degrees. Declare its real CRS, e.g. `downscale.grid.set_crs({name}, 'EPSG:32632')`."
        )


def _crs_label(crs):
    return "no CRS" if crs is None else grid_module._crs_name(crs)


def _extent(obj):
    parts = []
    for axis in ("x", "y"):
        values = np.asarray(obj[axis].values, dtype=float)
        half = abs(grid_module.grid_step(values, axis)) / 2
        parts.append(f"{axis} {values.min() - half:.6g}..{values.max() + half:.6g}")
    return ", ".join(parts)


def _extent_in(obj, crs_from, crs_to):
    """``"; x ..., y ... in <crs_to>"``: the extent of ``obj`` transformed, or ``""`` in the same CRS."""
    if crs_from is None or crs_to is None or crs_from.equals(crs_to):
        return ""
    import pyproj

    (x_low, x_high), (y_low, y_high) = (
        (_edges(obj[a].values)[0].min(), _edges(obj[a].values)[1].max()) for a in ("x", "y")
    )
    transformer = pyproj.Transformer.from_crs(crs_from, crs_to, always_xy=True)
    try:
        bounds = transformer.transform_bounds(x_low, y_low, x_high, y_high, densify_pts=21)
    except Exception:  # pyproj raises on bounds outside the target projection's domain
        return f"; outside the domain of {grid_module._crs_name(crs_to)}"
    return (
        f"; x {bounds[0]:.6g}..{bounds[2]:.6g}, y {bounds[1]:.6g}..{bounds[3]:.6g} in "
        f"{grid_module._crs_name(crs_to)}"
    )


def _wrap_longitudes(coarse, crs_coarse, fine, crs_fine):
    """Bring the longitudes of a geographic ``coarse`` to the side of the globe where ``fine`` lies."""
    x = np.asarray(coarse["x"].values, dtype=float)
    step = grid_module.grid_step(x, "coarse 'x'")
    centre_x = float(np.mean(fine["x"].values[[0, -1]]))
    centre_y = float(np.mean(fine["y"].values[[0, -1]]))
    if not crs_coarse.equals(crs_fine):
        import pyproj

        transformer = pyproj.Transformer.from_crs(crs_fine, crs_coarse, always_xy=True)
        centre_x, _ = transformer.transform(centre_x, centre_y)
        if not np.isfinite(centre_x):
            return coarse
    low, high = x.min() - abs(step) / 2, x.max() + abs(step) / 2
    if abs((high - low) - 360.0) < 0.5 * abs(step):
        # Global: roll so that the seam is half a turn away from the fine grid's centre.
        # The seam is the cell edge nearest to centre - 180, so cells are moved whole.
        seam = low + np.round((centre_x - 180.0 - low) / abs(step)) * abs(step)
        wrapped = seam + (x - seam) % 360.0
        if np.allclose(wrapped, x, rtol=0, atol=1e-9):
            return coarse
        order = np.argsort(wrapped) if step > 0 else np.argsort(wrapped)[::-1]
        return coarse.isel(x=order).assign_coords(x=("x", wrapped[order], dict(coarse["x"].attrs)))
    for shift in (0.0, -360.0, 360.0):
        if low + shift <= centre_x <= high + shift:
            if shift == 0.0:
                return coarse
            return coarse.assign_coords(x=("x", x + shift, dict(coarse["x"].attrs)))
    return coarse


def _looks_like_degrees(obj):
    y = np.asarray(obj["y"].values, dtype=float)
    x = np.asarray(obj["x"].values, dtype=float)
    return bool(np.nanmax(np.abs(y)) <= 90 and np.nanmax(np.abs(x)) <= 360)


def _edges(values):
    """Lower and upper edges of the cells of a regular 1-D coordinate (in coordinate order)."""
    values = np.asarray(values, dtype=float)
    half = abs(grid_module.grid_step(values)) / 2
    return values - half, values + half


def _choose_factor(cell_size, fine):
    """The factor dividing both fine sizes whose block size is closest (in ratio) to ``cell_size``."""
    fine_size = np.sqrt(
        abs(grid_module.grid_step(fine["y"].values) * grid_module.grid_step(fine["x"].values))
    )
    ideal = cell_size / fine_size
    ny, nx = fine.sizes["y"], fine.sizes["x"]
    candidates = [f for f in range(1, min(ny, nx) + 1) if ny % f == 0 and nx % f == 0]
    best = min(candidates, key=lambda f: abs(np.log(f / ideal)))
    if abs(np.log(best / ideal)) > np.log(1.25):
        import warnings

        warnings.warn(
            f"The coarse cells are about {ideal:.3g} fine cells wide, but the closest block size that "
            f"divides the fine grid ({ny} x {nx}) is {best}. Pass factor= explicitly or crop the fine "
            f"grid to a multiple of the block size you want.",
            stacklevel=3,
        )
    return best


def _remap_apply(numerator, covered, block_area, min_coverage):
    with np.errstate(invalid="ignore", divide="ignore"):
        values = numerator / covered
    fraction = covered / block_area
    values = np.where((covered > 0) & (fraction >= min_coverage - 1e-12), values, np.nan)
    return values, fraction


class _SeparableRemap:
    """Same-CRS remap: axis-aligned cells, overlap areas as outer products of 1-D overlaps."""

    def __init__(self, coarse, fine, geographic):
        self.geographic = geographic
        self.raw = {axis: _edges(coarse[axis].values) for axis in ("y", "x")}
        self.source = {axis: self._measure(axis, *self.raw[axis]) for axis in ("y", "x")}

    def _measure(self, axis, low, high):
        """Edges in a measure where lengths multiply to areas (sin(lat) and radians on the sphere)."""
        if not self.geographic:
            return low, high
        radius = grid_module.EARTH_RADIUS
        if axis == "y":
            return radius * np.sin(np.deg2rad(np.clip(low, -90, 90))), radius * np.sin(
                np.deg2rad(np.clip(high, -90, 90))
            )
        return radius * np.deg2rad(low), radius * np.deg2rad(high)

    def source_cell_size(self):
        """Geometric mean of the source cell sides, in the (shared) CRS units."""
        (y_low, y_high), (x_low, x_high) = self.raw["y"], self.raw["x"]
        return float(np.sqrt(np.mean(y_high - y_low) * np.mean(x_high - x_low)))

    def set_target(self, template):
        self.overlap = {}
        lengths = {}
        for axis in ("y", "x"):
            t_low, t_high = self._measure(axis, *_edges(template[axis].values))
            s_low, s_high = self.source[axis]
            overlap = np.minimum(t_high[:, None], s_high[None, :]) - np.maximum(
                t_low[:, None], s_low[None, :]
            )
            # Edges that coincide up to rounding must not leak a sliver of the neighbour in.
            scale = np.max(s_high - s_low)
            overlap[overlap < 1e-9 * scale] = 0.0
            self.overlap[axis] = overlap
            lengths[axis] = t_high - t_low
        self.block_area = lengths["y"][:, None] * lengths["x"][None, :]

    def apply(self, values, min_coverage):
        valid = np.isfinite(values)
        filled = np.where(valid, values, 0.0)
        oy, ox = self.overlap["y"], self.overlap["x"]
        numerator = oy @ filled @ ox.T
        covered = oy @ valid.astype(np.float64) @ ox.T
        return _remap_apply(numerator, covered, self.block_area, min_coverage)


def _working_plane(crs):
    """Function mapping (x, y) in ``crs`` to a plane where areas are the fine grid's areas."""
    if crs is not None and crs.is_geographic:
        radius = grid_module.EARTH_RADIUS

        def forward(x, y):
            return radius * np.deg2rad(x), radius * np.sin(np.deg2rad(np.clip(y, -90, 90)))

        return forward
    return lambda x, y: (np.asarray(x, dtype=float), np.asarray(y, dtype=float))


def cell_polygons(coarse, crs_to, densify: int = DENSIFY):
    """Outlines of the cells of ``coarse`` in the working plane of ``crs_to``.

    Each edge gets ``densify`` points, transformed with pyproj; neighbouring
    cells share exactly the same transformed points, so the outlines tile
    without gaps or overlaps. On a geographic ``crs_to`` the plane is the
    equal-area cylindrical ``(R lon, R sin lat)``, so planar areas are
    spherical areas.

    Returns
    -------
    polygons : numpy.ndarray of shapely Polygons, shape ``(ny * nx,)`` in row-major order
        (``None`` where the transformation failed).
    """
    import pyproj
    import shapely

    densify = int(densify)
    if densify < 1:
        raise ValueError(f"densify must be a positive whole number, got {densify!r}.")
    crs_from = grid_module.get_crs(coarse)
    edges = {}
    for axis in ("y", "x"):
        values = np.asarray(coarse[axis].values, dtype=float)
        step = grid_module.grid_step(values)
        boundaries = np.concatenate([values - step / 2, [values[-1] + step / 2]])
        fractions = np.arange(densify) / densify
        inner = boundaries[:-1, None] + np.diff(boundaries)[:, None] * fractions[None, :]
        edges[axis] = np.concatenate([inner.ravel(), boundaries[-1:]])
    lattice_x, lattice_y = np.meshgrid(edges["x"], edges["y"])
    if crs_from is not None and not crs_from.equals(crs_to):
        transformer = pyproj.Transformer.from_crs(crs_from, crs_to, always_xy=True)
        lattice_x, lattice_y = transformer.transform(lattice_x, lattice_y)
    lattice_x, lattice_y = _working_plane(crs_to)(np.asarray(lattice_x), np.asarray(lattice_y))

    ny, nx = coarse.sizes["y"], coarse.sizes["x"]
    k = np.arange(densify)
    # Ring of lattice offsets (row, col) around one cell, counter-clockwise in index space.
    ring_rows = np.concatenate([np.zeros(densify), k, np.full(densify, densify), densify - k, [0]]).astype(
        int
    )
    ring_cols = np.concatenate([k, np.full(densify, densify), densify - k, np.zeros(densify), [0]]).astype(
        int
    )
    rows = (np.arange(ny) * densify)[:, None, None] + ring_rows[None, None, :]
    cols = (np.arange(nx) * densify)[None, :, None] + ring_cols[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    coords = np.stack([lattice_x[rows, cols], lattice_y[rows, cols]], axis=-1).reshape(ny * nx, -1, 2)
    good = np.isfinite(coords).all(axis=(1, 2))
    polygons = np.full(ny * nx, None, dtype=object)
    if good.any():
        made = shapely.polygons(coords[good])
        # Orientation depends on the axis directions; area and intersections do not.
        made = shapely.make_valid(made) if not shapely.is_valid(made).all() else made
        polygons[good] = made
    return polygons


class _PolygonRemap:
    """Cross-CRS remap: exact intersections of transformed source outlines with target blocks."""

    def __init__(self, coarse, fine, crs_from, crs_to, densify):
        import pyproj

        # Only the source cells near the fine grid take part.
        transformer = pyproj.Transformer.from_crs(crs_to, crs_from, always_xy=True)
        (fx_low, fx_high), (fy_low, fy_high) = (
            (_edges(fine[a].values)[0].min(), _edges(fine[a].values)[1].max()) for a in ("x", "y")
        )
        bounds = transformer.transform_bounds(fx_low, fy_low, fx_high, fy_high, densify_pts=101)
        selection = {}
        for axis, low, high in (("x", bounds[0], bounds[2]), ("y", bounds[1], bounds[3])):
            values = np.asarray(coarse[axis].values, dtype=float)
            step = abs(grid_module.grid_step(values))
            inside = (values + step >= low - step) & (values - step <= high + step)
            selection[axis] = (
                np.flatnonzero(inside) if np.all(np.isfinite(bounds)) else np.arange(values.size)
            )
        if selection["x"].size == 0 or selection["y"].size == 0:
            self.index = None
        else:
            # Keep contiguous ranges so the subset is still a regular grid.
            self.index = {a: slice(selection[a].min(), selection[a].max() + 1) for a in ("y", "x")}
        self.coarse_shape = (coarse.sizes["y"], coarse.sizes["x"])
        self.crs_to = crs_to
        self.fine = fine
        if self.index is not None:
            subset = coarse.isel(y=self.index["y"], x=self.index["x"])
            if subset.sizes["y"] < 2 or subset.sizes["x"] < 2:
                # grid_step needs two cells; widen to the whole grid (rare: tiny fine grids).
                self.index = {"y": slice(None), "x": slice(None)}
                subset = coarse
            self.polygons = cell_polygons(subset, crs_to, densify)
        else:
            self.polygons = np.full(0, None, dtype=object)

    def source_cell_size(self):
        import shapely

        valid = self.polygons[self.polygons != None]  # noqa: E711  (object array)
        if valid.size == 0:
            return float("nan")
        area = float(np.median(shapely.area(valid)))
        if self.crs_to.is_geographic:
            # The plane is in metres; the fine grid is in degrees.
            metres_per_degree = np.deg2rad(1.0) * grid_module.EARTH_RADIUS
            mid_lat = np.deg2rad(float(np.mean(self.fine["y"].values)))
            return float(np.sqrt(area / (metres_per_degree**2 * np.cos(mid_lat))))
        return float(np.sqrt(area))

    def set_target(self, template):
        import shapely
        from scipy import sparse

        plane = _working_plane(self.crs_to)
        y_low, y_high = _edges(template["y"].values)
        x_low, x_high = _edges(template["x"].values)
        x_low, y_low = plane(x_low, y_low)
        x_high, y_high = plane(x_high, y_high)
        ny, nx = y_low.size, x_low.size
        boxes = shapely.box(
            np.broadcast_to(x_low[None, :], (ny, nx)).ravel(),
            np.broadcast_to(y_low[:, None], (ny, nx)).ravel(),
            np.broadcast_to(x_high[None, :], (ny, nx)).ravel(),
            np.broadcast_to(y_high[:, None], (ny, nx)).ravel(),
        )
        self.block_area = shapely.area(boxes).reshape(ny, nx)
        self.target_shape = (ny, nx)
        n_source = self.polygons.size
        present = np.flatnonzero(self.polygons != None)  # noqa: E711
        if present.size:
            tree = shapely.STRtree(self.polygons[present])
            target_index, hit = tree.query(boxes, predicate="intersects")
            source_index = present[hit]
            area = shapely.area(shapely.intersection(boxes[target_index], self.polygons[source_index]))
            keep = area > 0
            target_index, source_index, area = target_index[keep], source_index[keep], area[keep]
        else:
            target_index = source_index = np.zeros(0, dtype=int)
            area = np.zeros(0)
        self.weights = sparse.csr_matrix((area, (target_index, source_index)), shape=(ny * nx, n_source))

    def apply(self, values, min_coverage):
        *lead, _, _ = values.shape
        if self.index is None:
            subset = np.full((*lead, 0), np.nan)
        else:
            subset = values[..., self.index["y"], self.index["x"]].reshape(*lead, -1)
        flat = subset.reshape(int(np.prod(lead, dtype=int)), subset.shape[-1])
        valid = np.isfinite(flat)
        numerator = (self.weights @ np.where(valid, flat, 0.0).T).T
        covered = (self.weights @ valid.astype(np.float64).T).T
        shape = (*lead, *self.target_shape)
        return _remap_apply(numerator.reshape(shape), covered.reshape(shape), self.block_area, min_coverage)


# ------------------------------------------------------------------ time matching


def _time_index(obj, name):
    if not isinstance(obj, (xr.DataArray, xr.Dataset)):
        raise TypeError(
            f"{name} must be an xarray DataArray or Dataset with a 'time' dimension, got {type(obj).__name__}."
        )
    if "time" not in obj.dims:
        raise ValueError(
            f"{name} has no 'time' dimension (it has {tuple(obj.dims)}). Rename its time dimension, "
            f"e.g. `{name}.rename({{'t': 'time'}})`, or add one with `{name}.expand_dims(time=[...])`."
        )
    index = obj.indexes["time"]
    if hasattr(index, "to_datetimeindex"):  # cftime calendars
        index = index.to_datetimeindex()
    if not isinstance(index, pd.DatetimeIndex):
        raise ValueError(
            f"{name}'s 'time' coordinate holds {index.dtype} values, not dates. Decode it, e.g. "
            f"`xr.decode_cf(...)`, or assign dates with `{name}.assign_coords(time=pd.to_datetime(...))`."
        )
    return index


def _describe(index):
    if index.size == 0:
        return "no time steps"
    return f"{index.min()} .. {index.max()}, {index.size} step(s)"


def _daily(obj):
    """Daily means of the days that have at least one time step (time = the day's midnight)."""
    counts = obj["time"].resample(time="1D").count()
    means = obj.resample(time="1D").mean(keep_attrs=True)
    return means.sel(time=counts["time"].values[counts.values > 0])


def match_times(a, b, tolerance="12h", how: str = "nearest"):
    """Pair the time steps of two series; return both on the same time coordinate.

    Parameters
    ----------
    a : xarray.DataArray or xarray.Dataset
        Object with a ``time`` dimension (numpy or cftime dates).
    b : xarray.DataArray, xarray.Dataset, pandas.DataFrame or geopandas.GeoDataFrame
        Object with a ``time`` dimension, or a table of station records with a
        ``time`` column (many rows may share a time step).
    tolerance : str or pandas.Timedelta, default "12h"
        Largest time difference of a pair (``how="nearest"``).
    how : {"nearest", "daily"}
        ``"nearest"``: each step of ``a`` is paired with the nearest step of
        ``b`` within ``tolerance``; a step of ``b`` is used at most once (by the
        closest step of ``a``). ``"daily"``: both series are first averaged to
        daily means (days without data dropped), then paired by date.

    Returns
    -------
    a_matched, b_matched
        Both with the time coordinate of ``a_matched`` (``how="nearest"``) or
        the dates at midnight (``how="daily"``), in increasing order.
        When ``b`` is a table, ``b_matched`` holds its rows that match a step
        of ``a`` (each record matched to its nearest step of ``a``; a step may
        take many records) with that step in a column ``matched_time``, and
        ``a_matched`` the steps that got at least one record. With
        ``how="daily"`` the records are first averaged per station and day:
        float columns are averaged (count in ``n_records``); the other
        columns, the geometry and coordinate columns (``x``, ``lon``, ...)
        identify the station.

    Raises
    ------
    ValueError
        When no pair is found, naming both time ranges.

    Examples
    --------
    >>> import pandas as pd, xarray as xr
    >>> a = xr.DataArray([1.0, 2.0, 3.0], dims="time",
    ...                  coords={"time": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-05"])})
    >>> b = xr.DataArray([10.0, 20.0], dims="time",
    ...                  coords={"time": pd.to_datetime(["2020-01-01T03:00", "2020-01-02T13:00"])})
    >>> a_m, b_m = match_times(a, b, tolerance="6h")
    >>> a_m.values.tolist(), b_m.values.tolist()
    ([1.0], [10.0])
    >>> a_m, b_m = match_times(a, b, how="daily")
    >>> a_m.values.tolist(), b_m.values.tolist()
    ([1.0, 2.0], [10.0, 20.0])

    Station records (a table with a ``time`` column) keep their rows:

    >>> records = pd.DataFrame({"station_id": ["A", "B", "A"], "value": [0.5, 0.7, 0.9],
    ...     "time": pd.to_datetime(["2020-01-01T02:00", "2020-01-01T22:00", "2020-01-03T00:00"])})
    >>> a_m, b_m = match_times(a, records, tolerance="6h")
    >>> b_m["matched_time"].dt.strftime("%d").tolist(), a_m.values.tolist()
    (['01', '02'], [1.0, 2.0])
    """
    if isinstance(b, pd.DataFrame):
        return _match_table(a, b, tolerance, how)
    index_a, index_b = _time_index(a, "a"), _time_index(b, "b")
    a = a.assign_coords(time=index_a).sortby("time")
    b = b.assign_coords(time=index_b).sortby("time")
    index_a, index_b = a.indexes["time"], b.indexes["time"]
    if how == "daily":
        a, b = _daily(a), _daily(b)
        common = a.indexes["time"].intersection(b.indexes["time"])
        if common.size == 0:
            raise ValueError(
                f"No day is shared by a ({_describe(index_a)}) and b ({_describe(index_b)}). "
                f"Check that both series cover the same period (and the same time zone)."
            )
        return a.sel(time=common), b.sel(time=common)
    if how != "nearest":
        raise ValueError(f"how must be 'nearest' or 'daily', got {how!r}.")
    tolerance = _parse_tolerance(tolerance)
    for name, index in (("a", index_a), ("b", index_b)):
        if index.has_duplicates:
            raise ValueError(
                f"{name} has repeated time steps ({index[index.duplicated()][0]} and maybe more). "
                f"Average them first, e.g. with how='daily' or `{name}.groupby('time').mean()`."
            )
    if index_a.size and index_b.size:
        nearest = index_b.get_indexer(index_a, method="nearest")
        distance = np.abs((index_b[nearest] - index_a).to_numpy())
        candidates = np.flatnonzero(distance <= tolerance.to_timedelta64())
    else:
        nearest = distance = candidates = np.zeros(0, dtype=int)
    # One-to-one: when several steps of a pick the same step of b, the closest one keeps it.
    order = candidates[np.argsort(distance[candidates], kind="stable")]
    _, first = np.unique(nearest[order], return_index=True)
    chosen = np.sort(order[first])
    if chosen.size == 0:
        raise ValueError(
            f"No time step of a ({_describe(index_a)}) is within {tolerance} of a time step of b "
            f"({_describe(index_b)}). Widen tolerance=, or use how='daily' to compare daily means."
        )
    a_matched = a.isel(time=chosen)
    b_matched = b.isel(time=nearest[chosen]).assign_coords(time=a_matched["time"].values)
    return a_matched, b_matched


# ------------------------------------------------------------------ station tables

#: Float columns of a station table that locate a station rather than measure something.
_LOCATION_COLUMNS = {"x", "y", "easting", "northing", "lon", "lat", "longitude", "latitude", "long", "lng"}


def _table_times(table):
    """The ``time`` column of a station table as naive datetimes (time zones converted to UTC)."""
    if "time" not in table.columns:
        raise ValueError(
            f"b is a table without a 'time' column (its columns are {list(table.columns)}). Rename its "
            f"time column, e.g. `b.rename(columns={{'date': 'time'}})`, or read it with "
            f"`downscale.validation.read_stations`."
        )
    try:
        try:  # ISO 8601 strings of mixed precision ("2020-01-03", "2020-01-03T06:00") are common in CSV
            times = pd.to_datetime(table["time"], format="ISO8601")
        except (ValueError, TypeError):
            times = pd.to_datetime(table["time"])
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"b's 'time' column holds values that are not dates (e.g. {table['time'].iloc[0]!r}). "
            f"Convert it, e.g. `b['time'] = pd.to_datetime(b['time'])`."
        ) from error
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    if times.isna().any():
        raise ValueError(
            f"b's 'time' column has {int(times.isna().sum())} missing value(s). Drop those rows first, "
            f"e.g. `b.dropna(subset=['time'])`."
        )
    return pd.DatetimeIndex(times)


def _daily_table(table, times):
    """Daily means of the float columns of a station table, per station and day (time = midnight).

    A station is identified by every column that is not a measured float:
    identifiers, names, the geometry and coordinate columns (``x``, ``lon``, ...).
    """
    table = table.assign(time=times.floor("D"))
    measured = [
        c
        for c in table.columns
        if c != "time" and pd.api.types.is_float_dtype(table[c]) and str(c).lower() not in _LOCATION_COLUMNS
    ]
    import geopandas as gpd

    geometry = table.geometry.name if isinstance(table, gpd.GeoDataFrame) else None
    keys = [c for c in table.columns if c not in measured and c != geometry]
    frame = pd.DataFrame(table.drop(columns=[geometry]) if geometry else table)
    if geometry:
        frame["_geometry_key"] = table.geometry.to_wkb().to_numpy()
        keys = [*keys, "_geometry_key"]
    grouped = frame.groupby(keys, sort=True, dropna=False)
    daily = grouped[measured].mean().join(grouped.size().rename("n_records")).reset_index()
    if geometry:
        import shapely

        shapes = shapely.from_wkb(daily.pop("_geometry_key").to_numpy())
        daily = gpd.GeoDataFrame(daily.assign(**{geometry: shapes}), geometry=geometry, crs=table.crs)
    return daily


def _parse_tolerance(tolerance):
    try:
        return pd.Timedelta(tolerance)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"tolerance must be a time span such as '12h' or '1D', got {tolerance!r}."
        ) from error


def _match_table(a, b, tolerance, how):
    """match_times for a station table ``b``: keep its rows that match a step of ``a``."""
    index_a = _time_index(a, "a")
    a = a.assign_coords(time=index_a).sortby("time")
    index_a = a.indexes["time"]
    times = _table_times(b)
    if how == "daily":
        a = _daily(a)
        days = a.indexes["time"]
        b = _daily_table(b, times)
        row_times = pd.DatetimeIndex(b["time"])
        position = days.get_indexer(row_times)
        if not (position >= 0).any():
            raise ValueError(
                f"No day is shared by a ({_describe(index_a)}) and the records of b "
                f"({_describe(times.sort_values())}). Check that both cover the same period (and the same "
                f"time zone)."
            )
    elif how == "nearest":
        tolerance = _parse_tolerance(tolerance)
        if index_a.has_duplicates:
            raise ValueError(
                f"a has repeated time steps ({index_a[index_a.duplicated()][0]} and maybe more). "
                f"Average them first, e.g. with how='daily' or `a.groupby('time').mean()`."
            )
        position = index_a.get_indexer(times, method="nearest") if len(times) else np.zeros(0, dtype=int)
        distance = np.abs((index_a[position] - times).to_numpy()) if len(times) else position
        position = np.where(distance <= tolerance.to_timedelta64(), position, -1)
        if not (position >= 0).any():
            raise ValueError(
                f"No record of b ({_describe(times.sort_values())}) is within {tolerance} of a time step "
                f"of a ({_describe(index_a)}). Widen tolerance=, or use how='daily' to compare daily means."
            )
    else:
        raise ValueError(f"how must be 'nearest' or 'daily', got {how!r}.")
    keep = position >= 0
    steps = np.unique(position[keep])
    a_matched = a.isel(time=steps)
    b_matched = b.loc[keep].copy()
    b_matched["matched_time"] = a.indexes["time"][position[keep]]
    return a_matched, b_matched
