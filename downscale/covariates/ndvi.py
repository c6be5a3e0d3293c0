"""Vegetation covariates: NDVI from reflectances or a product on another grid, gap filling, vegetation cover.

NDVI is clipped to [-1, 1]. Cloud gaps (NaN) are filled, by linear
interpolation in time for a series and from the nearest valid cell otherwise,
and the filled cells are returned as a covariate of their own (``ndvi_gap``),
so a model can learn to trust filled values less. The fractional vegetation
cover is the scaled NDVI squared (Carlson and Ripley 1997), the form used by
the LST sharpening methods (DisTrad, TsHARP).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from .. import grid as grid_module

__all__ = [
    "fill_gaps",
    "fractional_vegetation_cover",
    "ndvi_features",
    "ndvi_from_reflectance",
    "regrid",
]


def _check_field(field, name):
    if not isinstance(field, xr.DataArray):
        raise TypeError(f"{name} must be an xarray DataArray, got {type(field).__name__}.")
    grid_module.check_grid(field, name=name)
    return field.transpose(..., "y", "x")


def _same_grid(a, b) -> bool:
    """True when ``a`` and ``b`` have the same y/x coordinates (to a thousandth of a cell)."""
    for axis in ("y", "x"):
        if a.sizes[axis] != b.sizes[axis]:
            return False
        step = abs(grid_module.grid_step(b[axis].values, axis))
        if not np.allclose(a[axis].values, b[axis].values, rtol=0.0, atol=1e-3 * step):
            return False
    return True


def ndvi_from_reflectance(red, nir) -> xr.DataArray:
    """NDVI ``(nir - red) / (nir + red)`` from red and near-infrared reflectance, clipped to [-1, 1].

    Reflectances may be scaled (e.g. integers 0-10000); only their ratio
    matters. Cells where ``nir + red <= 0`` or either band is missing are NaN.

    Raises
    ------
    ValueError
        When the two bands are not on the same grid.

    Examples
    --------
    >>> import xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((2, 2), 30.0, crs="EPSG:32632")
    >>> red = xr.DataArray([[0.05, 0.10], [0.30, 0.0]], dims=("y", "x"), coords=g.coords)
    >>> nir = xr.DataArray([[0.45, 0.30], [0.30, 0.0]], dims=("y", "x"), coords=g.coords)
    >>> ndvi_from_reflectance(red, nir).values.round(3).tolist()
    [[0.8, 0.5], [0.0, nan]]
    """
    red = _check_field(red, "red")
    nir = _check_field(nir, "nir")
    if red.shape != nir.shape or red.dims != nir.dims:
        raise ValueError(
            f"red and nir must be on the same grid: red has dims {red.dims} and shape {red.shape}, "
            f"nir has dims {nir.dims} and shape {nir.shape}. Resample one onto the other first, e.g. "
            f"`nir = nir.rio.reproject_match(red)`."
        )
    if not _same_grid(red, nir):
        raise ValueError(
            "red and nir have the same shape but different y/x coordinates; they must be on the same "
            "grid. Resample one onto the other first, e.g. `nir = nir.rio.reproject_match(red)`."
        )
    red_v = np.asarray(red.values, dtype=np.float64)
    nir_v = np.asarray(nir.values, dtype=np.float64)
    total = red_v + nir_v
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(total > 0, (nir_v - red_v) / total, np.nan)
    values = np.clip(values, -1.0, 1.0)
    out = red.copy(data=values)
    out.name = "ndvi"
    out.attrs = {"long_name": "normalized difference vegetation index", "units": "1"}
    crs = grid_module.get_crs(red)
    return grid_module.set_crs(out, crs) if crs is not None else out


def regrid(ndvi, target, resampling: str = "auto") -> xr.DataArray:
    """Bring an NDVI product onto the grid of ``target`` (reprojecting when the CRS differs).

    Parameters
    ----------
    ndvi : xarray.DataArray
        NDVI on its own grid, with a CRS.
    target : xarray.DataArray or xarray.Dataset
        The fine grid, with a CRS.
    resampling : {"auto", "bilinear", "average", "nearest"}
        ``"auto"`` averages when the source cells are smaller than the target's
        and interpolates bilinearly when they are larger.

    Raises
    ------
    ValueError
        When either grid has no CRS or the two grids do not overlap.
    """
    from rasterio.enums import Resampling

    ndvi = _check_field(ndvi, "ndvi")
    grid_module.check_grid(target, name="target")
    if _same_grid(ndvi, target):
        return ndvi.assign_coords(y=target["y"].values, x=target["x"].values)
    crs_source = grid_module.get_crs(ndvi)
    crs_target = grid_module.get_crs(target)
    if crs_source is None or crs_target is None:
        which = "ndvi" if crs_source is None else "the target grid"
        raise ValueError(
            f"ndvi is on a different grid than the DEM/target, and {which} has no CRS, so the two "
            f"cannot be aligned. Declare it, e.g. `downscale.grid.set_crs(ndvi, 'EPSG:4326')`, or "
            f"pass ndvi on the target grid."
        )
    _check_overlap(ndvi, target, crs_target)
    if resampling == "auto":
        source_cell = _cell_size_in(ndvi, crs_target)
        target_cell = abs(grid_module.grid_step(target["x"].values, "x"))
        resampling = "average" if source_cell < target_cell else "bilinear"
    methods = {"bilinear": Resampling.bilinear, "average": Resampling.average, "nearest": Resampling.nearest}
    if resampling not in methods:
        raise ValueError(f"resampling must be one of {['auto', *methods]}, got {resampling!r}.")
    match = (
        target
        if isinstance(target, xr.DataArray)
        else xr.DataArray(
            np.zeros((target.sizes["y"], target.sizes["x"])),
            dims=("y", "x"),
            coords={"y": target["y"], "x": target["x"]},
        )
    )
    match = grid_module.set_crs(match, crs_target)
    source = ndvi.astype(np.float64).rio.write_nodata(np.nan, encoded=False)
    source = grid_module.set_crs(source, crs_source).rio.write_nodata(np.nan, encoded=False)
    out = source.rio.reproject_match(match, resampling=methods[resampling], nodata=np.nan)
    out = out.assign_coords(y=target["y"].values, x=target["x"].values)
    if not np.isfinite(out.values).any():
        raise ValueError(
            "ndvi has no valid value on the target grid after regridding: the grids barely overlap or "
            "the NDVI is all missing there. Check both extents and CRS."
        )
    out.attrs = dict(ndvi.attrs)
    out.attrs.pop("_FillValue", None)
    out.encoding.pop("_FillValue", None)
    out.name = ndvi.name
    return grid_module.set_crs(out, crs_target)


def _cell_size_in(field, crs):
    """Approximate cell width of ``field`` in the units of ``crs``."""
    bounds = field.rio.transform_bounds(crs)
    return (bounds[2] - bounds[0]) / field.sizes["x"]


def _check_overlap(ndvi, target, crs_target):
    left, bottom, right, top = ndvi.rio.transform_bounds(crs_target)
    x, y = target["x"].values, target["y"].values
    t_left, t_right = np.min(x), np.max(x)
    t_bottom, t_top = np.min(y), np.max(y)
    if left > t_right or right < t_left or bottom > t_top or top < t_bottom:
        raise ValueError(
            f"ndvi does not overlap the target grid: in the target CRS ndvi spans x {left:.6g}..{right:.6g}, "
            f"y {bottom:.6g}..{top:.6g}, the target x {t_left:.6g}..{t_right:.6g}, y {t_bottom:.6g}..{t_top:.6g}. "
            f"Check that both grids declare the right CRS."
        )


def _nearest_fill(values, fill_here):
    """Fill NaN cells of a 2-D array where ``fill_here`` from the nearest valid cell."""
    valid = np.isfinite(values)
    if valid.all() or not valid.any():
        return values
    _, (rows, cols) = ndimage.distance_transform_edt(~valid, return_indices=True)
    filled = values[rows, cols]
    return np.where(fill_here & ~valid, filled, values)


def _interpolate_in_time(values, time):
    """Linear interpolation of NaN along axis 0 (time), held constant beyond the first/last valid step."""
    n = values.shape[0]
    valid = np.isfinite(values)
    index = np.arange(n).reshape(-1, *([1] * (values.ndim - 1)))
    previous = np.maximum.accumulate(np.where(valid, index, -1), axis=0)
    following = np.minimum.accumulate(np.where(valid, index, n)[::-1], axis=0)[::-1]
    has_previous, has_following = previous >= 0, following < n
    prev_c, next_c = np.clip(previous, 0, n - 1), np.clip(following, 0, n - 1)
    value_prev = np.take_along_axis(values, prev_c, axis=0)
    value_next = np.take_along_axis(values, next_c, axis=0)
    t, t_prev, t_next = time[index], time[prev_c], time[next_c]
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(t_next > t_prev, (t - t_prev) / (t_next - t_prev), 0.0)
    both = value_prev + weight * (value_next - value_prev)
    out = np.where(has_previous & has_following, both, np.where(has_previous, value_prev, value_next))
    out = np.where(has_previous | has_following, out, np.nan)
    return np.where(valid, values, out)


def fill_gaps(ndvi, land=None) -> tuple[xr.DataArray, xr.DataArray]:
    """Fill NaN gaps (clouds) in NDVI; return ``(filled, gap_mask)``.

    A series (a ``time`` dimension with more than one step) is filled by
    linear interpolation in time, held constant before the first and after
    the last valid step; cells with no valid step at all, and single fields,
    take the value of the nearest valid cell. The gap mask is 1 where a value
    was filled and 0 where it was observed.

    Parameters
    ----------
    ndvi : xarray.DataArray
        ``(y, x)`` or ``(time, y, x)``.
    land : xarray.DataArray of bool, optional
        Only cells on land are filled; elsewhere (the sea) NaN stays NaN.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((2, 2), 1.0, crs="EPSG:32632")
    >>> series = xr.DataArray([[[0.2, 0.4], [0.6, 0.6]], [[np.nan, np.nan], [0.6, 0.6]], [[0.4, 0.8], [0.6, 0.6]]],
    ...                       dims=("time", "y", "x"), coords={"time": [0, 1, 2], **g.coords})
    >>> filled, gap = fill_gaps(series)
    >>> filled.values[1].tolist(), gap.values[1].tolist()
    ([[0.3, 0.6], [0.6, 0.6]], [[1.0, 1.0], [0.0, 0.0]])
    """
    ndvi = _check_field(ndvi, "ndvi")
    original = np.asarray(ndvi.values, dtype=np.float64)
    if land is not None:
        land_values = np.asarray(_check_field(land, "land").values)
        land_mask = np.isfinite(land_values.astype(float)) & (land_values.astype(float) != 0)
        if land_mask.shape != original.shape[-2:]:
            raise ValueError(
                f"land has shape {land_mask.shape}, but ndvi's grid is {original.shape[-2:]}; "
                f"they must be on the same grid."
            )
    else:
        land_mask = np.ones(original.shape[-2:], dtype=bool)
    filled = ndvi.astype(np.float64)
    series = "time" in ndvi.dims and ndvi.sizes["time"] > 1
    if series:
        other = [d for d in ndvi.dims if d not in ("time", "y", "x")]
        if other:
            raise ValueError(f"ndvi must have dims (time, y, x) or (y, x); it has {ndvi.dims}.")
        filled = filled.transpose("time", "y", "x")
        time = ndvi["time"].values
        if np.issubdtype(time.dtype, np.datetime64):
            time = (time - time[0]) / np.timedelta64(1, "s")
        elif not np.issubdtype(time.dtype, np.number):
            time = np.arange(time.size)
        values = _interpolate_in_time(
            np.asarray(filled.values, dtype=np.float64), np.asarray(time, dtype=float)
        )
    else:
        values = np.asarray(filled.values).copy()
    flat = values.reshape(-1, *values.shape[-2:])
    for index in range(flat.shape[0]):
        flat[index] = _nearest_fill(flat[index], land_mask)
    values = flat.reshape(values.shape)
    values = np.where(land_mask, values, original)
    gap = (~np.isfinite(original) & np.isfinite(values)).astype(np.float64)
    filled_da = ndvi.copy(data=values.reshape(original.shape))
    filled_da.attrs = dict(ndvi.attrs)
    gap_da = ndvi.copy(data=gap.reshape(original.shape))
    gap_da.name = "ndvi_gap"
    gap_da.attrs = {"long_name": "NDVI gap mask (1 = value filled, 0 = observed)", "units": "1"}
    return filled_da, gap_da


def fractional_vegetation_cover(ndvi, ndvi_soil: float = 0.2, ndvi_veg: float = 0.86, exponent: float = 2.0):
    """Fractional vegetation cover ``((ndvi - ndvi_soil) / (ndvi_veg - ndvi_soil)) ** exponent`` in [0, 1].

    The scaled-NDVI-squared form of Carlson and Ripley (1997), as used by LST
    sharpening (DisTrad, TsHARP). ``ndvi_soil`` and ``ndvi_veg`` are the NDVI
    of bare soil and of full cover; the defaults are typical values, pass the
    scene's own (e.g. low and high percentiles) when known.

    Examples
    --------
    >>> import xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((2, 2), 1.0)
    >>> ndvi = xr.DataArray([[0.1, 0.2], [0.53, 0.9]], dims=("y", "x"), coords=g.coords)
    >>> fractional_vegetation_cover(ndvi).values.round(3).tolist()
    [[0.0, 0.0], [0.25, 1.0]]
    """
    if not ndvi_veg > ndvi_soil:
        raise ValueError(f"ndvi_veg ({ndvi_veg}) must be larger than ndvi_soil ({ndvi_soil}).")
    scaled = np.clip((ndvi.astype(np.float64) - ndvi_soil) / (ndvi_veg - ndvi_soil), 0.0, 1.0)
    out = scaled**exponent
    out.name = "fvc"
    out.attrs = {
        "long_name": "fractional vegetation cover (scaled NDVI squared)",
        "units": "1",
        "ndvi_soil": ndvi_soil,
        "ndvi_veg": ndvi_veg,
    }
    return out


def ndvi_features(
    ndvi=None,
    red=None,
    nir=None,
    target=None,
    fill: bool = True,
    land=None,
    fvc: bool = True,
    ndvi_soil: float = 0.2,
    ndvi_veg: float = 0.86,
) -> xr.Dataset:
    """NDVI covariates on the grid of ``target``: ``ndvi``, ``ndvi_gap`` (with ``fill``) and ``fvc``.

    Give either ``ndvi`` or both ``red`` and ``nir``. When the NDVI is on
    another grid than ``target`` it is regridded with :func:`regrid`.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(20, 20), factor=10)
    >>> list(ndvi_features(scene.ndvi).data_vars)
    ['ndvi', 'ndvi_gap', 'fvc']
    """
    if ndvi is None:
        if red is None or nir is None:
            raise ValueError("Give either ndvi, or both red and nir reflectance.")
        ndvi = ndvi_from_reflectance(red, nir)
    elif red is not None or nir is not None:
        raise ValueError("Give either ndvi or red and nir, not both.")
    ndvi = _check_field(ndvi, "ndvi")
    if target is not None:
        ndvi = regrid(ndvi, target)
    values = np.clip(ndvi.astype(np.float64), -1.0, 1.0)
    values.name = "ndvi"
    values.attrs = {"long_name": "normalized difference vegetation index", "units": "1"}
    out = {}
    if fill:
        values, gap = fill_gaps(values, land=land)
        out["ndvi"] = values
        out["ndvi_gap"] = gap
    else:
        out["ndvi"] = values
    if fvc:
        out["fvc"] = fractional_vegetation_cover(out["ndvi"], ndvi_soil=ndvi_soil, ndvi_veg=ndvi_veg)
    result = xr.Dataset(out)
    crs = grid_module.get_crs(target if target is not None else ndvi)
    return grid_module.set_crs(result, crs) if crs is not None else result
