"""Stack all covariates into one Dataset on the fine grid, and aggregate them to the coarse grid.

Why the coarse covariates are block means of the fine ones
-----------------------------------------------------------
The trend model is fitted on coarse cells and applied to fine cells. For the
two to speak the same language, the coarse value of every covariate is the
(area-weighted, NaN-aware) mean of its fine values over the block, computed
with :func:`downscale.grid.block_mean` - the same function that defines
coherence. It is *not* the feature recomputed from an aggregated input: the
coarse "slope" is the mean fine slope of the block (a measure of how steep the
block's terrain is), not the slope of the smoothed coarse DEM, which would be
much smaller and a different quantity.

For non-linear features this is a choice, stated here so it can be judged:

* aspect: ``northness`` and ``eastness`` are averaged separately. Their block
  means are the mean unit downslope vector, whose length is below 1 when the
  block's slopes face different ways; a block of mixed aspects gets values
  near 0, as a flat block does. Averaging aspect angles directly would be
  wrong (the mean of 350 and 10 degrees is not 180).
* curvature, TPI, TWI, roughness: block means of the fine values (the mean
  convexity, relative position or wetness of the block's cells).
* location: the block mean of the fine coordinates is the coarse cell centre
  (on geographic grids, the area-weighted centre), as expected.
* ``ndvi_gap``: the fraction of the block that was gap-filled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import xarray as xr

from .. import grid as grid_module
from . import dem as dem_module
from . import location as location_module
from . import ndvi as ndvi_module

__all__ = ["aggregate", "build"]


def _template_of(dem, ndvi, red, extra, land):
    for candidate in (dem, ndvi, red, land):
        if isinstance(candidate, (xr.DataArray, xr.Dataset)):
            return candidate
    if extra:
        return next(iter(extra.values()))
    return None


def _on_grid(field, template, name):
    """Return ``field`` with the template's exact y/x coordinates, or raise if it is on another grid."""
    grid_module.check_grid(field, name=name)
    if not ndvi_module._same_grid(field, template):
        raise ValueError(
            f"{name} is not on the fine grid of the other covariates: it has "
            f"{field.sizes['y']} x {field.sizes['x']} cells (y from {float(field['y'][0]):.6g}, x from "
            f"{float(field['x'][0]):.6g}), the grid has {template.sizes['y']} x {template.sizes['x']} "
            f"(y from {float(template['y'][0]):.6g}, x from {float(template['x'][0]):.6g}). Regrid it first, "
            f"e.g. `{name}.rio.reproject_match(dem)`."
        )
    return field.assign_coords(y=template["y"].values, x=template["x"].values)


def _extra_fields(extra) -> dict:
    """The ``extra`` covariates as a dict of name to DataArray, from a dict, a Dataset or a named DataArray."""
    if extra is None:
        return {}
    if isinstance(extra, xr.Dataset):
        return {str(name): field for name, field in extra.data_vars.items()}
    if isinstance(extra, xr.DataArray):
        if extra.name is None:
            raise ValueError(
                "extra is a DataArray without a name, so the covariate would have none; "
                "name it (extra=field.rename('emissions')) or pass a dict, extra={'emissions': field}."
            )
        return {str(extra.name): extra}
    if isinstance(extra, Mapping):
        return dict(extra)
    raise TypeError(
        "extra must be a dict of name to DataArray, a Dataset or a named DataArray, "
        f"got {type(extra).__name__}."
    )


def build(
    dem=None,
    ndvi=None,
    location=False,
    extra=None,
    land=None,
    features=None,
    tpi_radii=dem_module.DEFAULT_TPI_RADII,
    solar_time=None,
    oblique_angles=location_module.DEFAULT_OBLIQUE_ANGLES,
    red=None,
    nir=None,
    fill_ndvi: bool = True,
) -> xr.Dataset:
    """Build the fine-grid covariates: one Dataset with every variable documented (``units``, ``long_name``).

    Any subset of the inputs may be given. The fine grid is the DEM's, else the
    NDVI's (or the red band's), else the land mask's, else that of the first
    ``extra`` field.

    Parameters
    ----------
    dem : xarray.DataArray, optional
        Elevation (m) with a CRS; gives the terrain features of :func:`downscale.covariates.dem.dem_features`
        (float32, computed in float64; ``elevation`` is the DEM's own array).
    ndvi : xarray.DataArray, optional
        NDVI ``(y, x)`` or ``(time, y, x)``, on the fine grid or on another grid with a CRS (then regridded).
        Gives ``ndvi`` (clipped, gaps filled), ``ndvi_gap`` and ``fvc``.
    location : bool or dict
        Add coordinates (``easting``, ``northing``, ``lon``, ``lat``, ``oblique_<angle>``); a dict is
        passed to :func:`downscale.covariates.location.location_features`.
    extra : dict of str to xarray.DataArray, xarray.Dataset or named xarray.DataArray, optional
        Further covariates already on the fine grid, added as they are (e.g. an emission
        inventory for NO2: ``extra=scene.extra`` for a synthetic scene).
    land : xarray.DataArray of bool, optional
        Land mask: adds ``distance_to_coast`` and keeps NDVI gap filling on land.
    features : sequence of str, optional
        DEM features to compute (default: all of :data:`downscale.covariates.dem.DEFAULT_FEATURES`).
    tpi_radii : sequence of float
        Radii (m) of the topographic position index.
    solar_time : optional
        UTC time for the terrain illumination proxy (added when given).
    oblique_angles : sequence of float
        Angles of the oblique coordinates.
    red, nir : xarray.DataArray, optional
        Reflectances to compute NDVI from, instead of ``ndvi``.
    fill_ndvi : bool
        Fill NDVI gaps (and add ``ndvi_gap``).

    Returns
    -------
    xarray.Dataset
        Dims ``(y, x)``, plus ``time`` for the variables of an NDVI series; the CRS of the grid.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(40, 40), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    >>> sorted(X.data_vars)[:6]
    ['easting', 'eastness', 'elevation', 'fvc', 'lat', 'lon']
    >>> X["slope"].attrs["units"]
    'degree'
    """
    extra = _extra_fields(extra)
    template = _template_of(dem, ndvi, red, extra, land)
    if template is None:
        raise ValueError(
            "build needs at least one gridded input (dem, ndvi, red/nir, land or extra) to define the fine "
            "grid; location coordinates alone have no grid. Pass e.g. dem=..."
        )
    grid_module.check_grid(template, name="the fine grid")
    crs = grid_module.get_crs(template)
    parts = []
    if dem is not None:
        parts.append(
            dem_module.dem_features(dem, features=features, tpi_radii=tpi_radii, solar_time=solar_time)
        )
    elif features is not None or solar_time is not None:
        raise ValueError("features= and solar_time= select DEM features, but no dem was given.")
    if ndvi is not None or red is not None or nir is not None:
        land_for_ndvi = _on_grid(land, template, "land") if land is not None else None
        target = None
        if ndvi is not None and not ndvi_module._same_grid(ndvi, template):
            target = template
        parts.append(
            ndvi_module.ndvi_features(
                ndvi=ndvi, red=red, nir=nir, target=target, fill=fill_ndvi, land=land_for_ndvi
            )
        )
    if location:
        options = dict(location) if isinstance(location, dict) else {}
        options.setdefault("angles", oblique_angles)
        parts.append(location_module.location_features(template, **options))
    if land is not None:
        land = _on_grid(land, template, "land")
        try:
            parts.append(location_module.distance_to_coast(land).to_dataset())
        except ValueError as error:
            warnings.warn(f"distance_to_coast left out: {error}", stacklevel=2)
    for name, field in extra.items():
        if name in ("x", "y"):
            raise ValueError(f"extra covariate {name!r} would shadow a grid coordinate; rename it.")
        if not isinstance(field, xr.DataArray):
            raise TypeError(f"extra[{name!r}] must be an xarray DataArray, got {type(field).__name__}.")
        field = _on_grid(field, template, f"extra[{name!r}]").rename(name)
        attrs = dict(field.attrs)
        attrs.setdefault("long_name", name)
        attrs.setdefault("units", "unknown")
        parts.append(field.assign_attrs(attrs).to_dataset())
    variables = {}
    for part in parts:
        for name, da in part.data_vars.items():
            if name == "spatial_ref":
                continue
            if name in variables:
                raise ValueError(
                    f"Two covariates are named {name!r}; rename the one in extra=, e.g. extra={{'{name}_2': ...}}."
                )
            da = da.assign_coords(y=template["y"].values, x=template["x"].values)
            da = da.drop_vars("spatial_ref", errors="ignore")
            variables[name] = da
    if not variables:
        raise ValueError(
            "build was given no covariate to compute: pass dem=, ndvi=, location=True or extra=."
        )
    result = xr.Dataset(variables)
    result["y"].attrs.update(template["y"].attrs)
    result["x"].attrs.update(template["x"].attrs)
    return grid_module.set_crs(result, crs) if crs is not None else result


def aggregate(X, coarse, min_valid: float = 0.5) -> xr.Dataset:
    """Bring fine covariates to the coarse grid: the NaN-aware, area-weighted block mean of every variable.

    The coarse values are exactly what :func:`downscale.grid.block_mean` gives,
    so a model trained on coarse cells sees the block averages of the very
    quantities it will be applied to at the fine scale (see the module notes
    for non-linear features such as aspect).

    Parameters
    ----------
    X : xarray.Dataset or xarray.DataArray
        Fine covariates, e.g. from :func:`build`.
    coarse : int or xarray grid
        The nesting factor, or a coarse grid in which ``X`` nests.
    min_valid : float
        Smallest valid fraction of a block for it to get a value.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(40, 40), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"])
    >>> Xc = aggregate(X, scene.coarse)
    >>> Xc.sizes["y"], Xc.sizes["x"]
    (4, 4)
    """
    grid_module.check_grid(X, name="X")
    if isinstance(coarse, (xr.DataArray, xr.Dataset)):
        factor = grid_module.nesting_factor(coarse, X)
        coords = {"y": coarse["y"].values, "x": coarse["x"].values}
    else:
        factor = coarse
        coords = None
    out = grid_module.block_mean(X, factor, min_valid=min_valid)
    if coords is not None:
        out = out.assign_coords(**coords)
    variables = out.data_vars if isinstance(out, xr.Dataset) else {out.name: out}
    for da in variables.values():
        if {"y", "x"} <= set(da.dims):
            da.attrs["cell_methods"] = "area: mean"
    return out
