"""Location covariates: projected and geographic coordinates, oblique coordinates, distance to the coast.

Tree models (random forests, gradient boosting) split on one feature at a
time, so a spatial trend along a diagonal needs many splits on ``easting`` and
``northing``. Oblique (rotated) coordinates ``x cos(a) + y sin(a)`` at several
angles (Møller et al. 2020, SOIL 6, 269-289) give them the diagonals directly.
Every location feature depends only on where a cell is, never on the extent of
the grid, so tiles of one region get identical values.

Variable names never clash with the grid's own ``x``/``y`` coordinates:
``easting``, ``northing``, ``lon``, ``lat``, ``oblique_30``, ...,
``distance_to_coast``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from .. import grid as grid_module

__all__ = ["DEFAULT_OBLIQUE_ANGLES", "distance_to_coast", "location_features", "oblique_coordinates"]

#: Default rotation angles (degrees, counter-clockwise from east); 0 and 90 are easting and northing.
DEFAULT_OBLIQUE_ANGLES = (30.0, 60.0, 120.0, 150.0)


def _template(grid, name="grid"):
    grid_module.check_grid(grid, name=name)
    return grid


def _wrap(values, grid, name, long_name, units, **attrs):
    out = xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": grid["y"], "x": grid["x"]},
        name=name,
        attrs={"long_name": long_name, "units": units, **attrs},
    )
    crs = grid_module.get_crs(grid)
    return grid_module.set_crs(out, crs) if crs is not None else out


def _angle_label(angle):
    return f"oblique_{float(angle):g}".replace(".", "p").replace("-", "m")


def oblique_coordinates(grid, angles=DEFAULT_OBLIQUE_ANGLES) -> xr.Dataset:
    """Rotated coordinates ``x cos(a) + y sin(a)`` for each angle ``a`` (degrees, counter-clockwise from east).

    In the grid's CRS units: metres on projected grids, degrees on geographic ones.

    Examples
    --------
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((2, 2), 1.0, crs="EPSG:32632")
    >>> oblique_coordinates(g, angles=[45])["oblique_45"].values.round(3).tolist()
    [[1.414, 2.121], [0.707, 1.414]]
    """
    _template(grid)
    crs = grid_module.get_crs(grid)
    units = "degree" if crs is not None and crs.is_geographic else "m"
    x = np.asarray(grid["x"].values, dtype=float)[None, :]
    y = np.asarray(grid["y"].values, dtype=float)[:, None]
    out = {}
    for angle in angles:
        a = np.deg2rad(float(angle))
        name = _angle_label(angle)
        out[name] = _wrap(
            x * np.cos(a) + y * np.sin(a),
            grid,
            name,
            f"oblique coordinate x cos({float(angle):g} deg) + y sin({float(angle):g} deg)",
            units,
            angle=float(angle),
        )
    return xr.Dataset(out)


def _lonlat(grid):
    """2-D longitude and latitude (degrees) of every cell centre."""
    import pyproj

    crs = grid_module.get_crs(grid)
    x = np.asarray(grid["x"].values, dtype=float)
    y = np.asarray(grid["y"].values, dtype=float)
    if crs.is_geographic:
        return np.broadcast_to(x[None, :], (y.size, x.size)).copy(), np.broadcast_to(
            y[:, None], (y.size, x.size)
        ).copy()
    transformer = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xx, yy = np.meshgrid(x, y)
    lon, lat = transformer.transform(xx, yy)
    return np.asarray(lon), np.asarray(lat)


def location_features(
    grid, angles=DEFAULT_OBLIQUE_ANGLES, lonlat: bool = True, projected: bool = True
) -> xr.Dataset:
    """Coordinates of every cell as covariates.

    Parameters
    ----------
    grid : xarray.DataArray or xarray.Dataset
        Any grid (only its coordinates and CRS are used).
    angles : sequence of float
        Angles of the oblique coordinates (see :func:`oblique_coordinates`); empty for none.
    lonlat : bool
        Add ``lon`` and ``lat`` (degrees); needs a CRS.
    projected : bool
        On projected grids, add ``easting`` and ``northing`` (m).

    Examples
    --------
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((3, 4), 1000.0, origin=(500_000.0, 5_000_000.0), crs="EPSG:32632")
    >>> list(location_features(g, angles=[45]).data_vars)
    ['easting', 'northing', 'lon', 'lat', 'oblique_45']
    """
    _template(grid)
    crs = grid_module.get_crs(grid)
    out = {}
    geographic = crs is not None and crs.is_geographic
    x = np.asarray(grid["x"].values, dtype=float)
    y = np.asarray(grid["y"].values, dtype=float)
    shape = (y.size, x.size)
    if projected and not geographic:
        out["easting"] = _wrap(
            np.broadcast_to(x[None, :], shape).copy(), grid, "easting", "easting (projected x)", "m"
        )
        out["northing"] = _wrap(
            np.broadcast_to(y[:, None], shape).copy(), grid, "northing", "northing (projected y)", "m"
        )
    if lonlat:
        if crs is None:
            raise ValueError(
                "The grid has no CRS, so longitude and latitude are unknown. Declare it, e.g. "
                "`downscale.grid.set_crs(grid, 'EPSG:32632')`, or pass lonlat=False."
            )
        lon, lat = _lonlat(grid)
        out["lon"] = _wrap(lon, grid, "lon", "longitude", "degrees_east", standard_name="longitude")
        out["lat"] = _wrap(lat, grid, "lat", "latitude", "degrees_north", standard_name="latitude")
    out.update(oblique_coordinates(grid, angles).data_vars)
    result = xr.Dataset(out)
    return grid_module.set_crs(result, crs) if crs is not None else result


def _as_land(land):
    if not isinstance(land, xr.DataArray):
        raise TypeError(f"land must be an xarray DataArray (True on land), got {type(land).__name__}.")
    grid_module.check_grid(land, name="land")
    if land.ndim != 2:
        raise ValueError(f"land must be 2-D with dims ('y', 'x'); it has dims {land.dims}.")
    values = np.asarray(land.transpose("y", "x").values)
    if values.dtype == bool:
        return values
    values = values.astype(float)
    # NaN counts as sea: a DEM masked over the sea can be passed as `dem.notnull()` or directly.
    return np.isfinite(values) & (values != 0)


def distance_to_coast(land, signed: bool = True) -> xr.DataArray:
    """Distance (m) from each cell centre to the centre of the nearest cell on the other side of the coast.

    Positive on land (distance to the nearest sea cell); over the sea negative
    (minus the distance to the nearest land cell) when ``signed``, else 0.
    Distances are exact Euclidean distances on projected grids and great-circle
    distances on geographic grids.

    Parameters
    ----------
    land : xarray.DataArray
        True (or non-zero) on land; False, 0 or NaN over the sea.
    signed : bool

    Raises
    ------
    ValueError
        When the mask has no sea or no land: there is no coast within the grid.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((2, 5), 1000.0, crs="EPSG:32632")
    >>> land = xr.DataArray([[False, True, True, True, False]] * 2, dims=("y", "x"), coords=g.coords)
    >>> distance_to_coast(ds.grid.set_crs(land, "EPSG:32632")).values[0].tolist()
    [-1000.0, 1000.0, 2000.0, 1000.0, -1000.0]
    """
    is_land = _as_land(land)
    n_land = int(is_land.sum())
    if n_land == 0 or n_land == is_land.size:
        what = "no land" if n_land == 0 else "no sea"
        raise ValueError(
            f"The land mask has {what}, so there is no coast within the grid and the distance to it is "
            f"undefined. Pass a mask on a grid that includes the coast, or leave distance_to_coast out."
        )
    crs = grid_module.get_crs(land)
    if crs is not None and crs.is_geographic:
        inland = _geodesic_distance(land, is_land)
        offshore = _geodesic_distance(land, ~is_land)
    else:
        dy, dx = grid_module.cell_size_metres(land)
        sampling = (float(dy[0]), float(dx[0]))
        inland = ndimage.distance_transform_edt(is_land, sampling=sampling)
        offshore = ndimage.distance_transform_edt(~is_land, sampling=sampling)
    values = np.where(is_land, inland, -offshore if signed else 0.0)
    return _wrap(
        values,
        land,
        "distance_to_coast",
        "distance to the coast (> 0 inland, < 0 offshore)" if signed else "distance to the coast",
        "m",
    )


def _geodesic_distance(grid, inside):
    """Great-circle distance from each ``inside`` cell to the nearest cell outside it (0 outside)."""
    from scipy.spatial import cKDTree

    lon, lat = _lonlat(grid)
    lon_r, lat_r = np.deg2rad(lon), np.deg2rad(lat)
    xyz = np.stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)], axis=-1)
    outside = ~inside
    # The nearest outside cell is always one that touches the inside region.
    border = outside & ndimage.binary_dilation(inside, structure=np.ones((3, 3), bool))
    tree = cKDTree(xyz[border])
    chord, _ = tree.query(xyz[inside])
    distance = np.zeros(inside.shape)
    distance[inside] = 2.0 * grid_module.EARTH_RADIUS * np.arcsin(np.minimum(chord / 2.0, 1.0))
    return distance
