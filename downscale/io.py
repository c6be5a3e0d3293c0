"""CF-1.8 netCDF reading and atomic writing, with provenance attributes.

:func:`write_netcdf` writes what the package produces with the metadata a
reader needs (units, standard names, the CRS as a CF grid mapping, fill
values, compression, chunking, history and the parameters of the run), and
never leaves a half-written file under the final name. :func:`read_netcdf`
opens a file as a grid the package accepts, or says exactly what is wrong
with it and how to fix it.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from . import grid as grid_module

__all__ = ["COMPLETE_ATTRIBUTE", "cf_attributes", "read_netcdf", "write_netcdf"]

#: Global attribute (value 1) written into every file; a file without it was not finished by this package.
COMPLETE_ATTRIBUTE = "downscale_complete"

#: Spatial chunk side (cells) used when writing.
CHUNK_SIDE = 256

_ALIASES = {
    "precip": "precipitation",
    "pr": "precipitation",
    "land_surface_temperature": "lst",
    "sm": "soil_moisture",
    "tropospheric_no2": "no2",
}

#: Dimension names renamed to ``y`` / ``x`` on reading.
_SPATIAL_RENAMES = (("lat", "lon"), ("latitude", "longitude"))


def cf_attributes(variable_name) -> dict:
    """Standard CF attributes (``standard_name``, ``long_name``, ``units``) of a known variable.

    Known: ``"precipitation"`` (daily amount, ``lwe_thickness_of_precipitation_amount``
    in mm, as in :data:`downscale.datasets.VARIABLES`), ``"lst"``
    (``surface_temperature``, K), ``"no2"`` (``troposphere_mole_content_of_nitrogen_dioxide``,
    umol m-2) and ``"soil_moisture"`` (``volume_fraction_of_condensed_water_in_soil``, m3 m-3),
    plus a few aliases (``"pr"``, ``"sm"``, ...). A ``_std`` suffix gives the
    attributes of the prediction's standard deviation (CF modifier
    ``standard_error``). Unknown names give ``{}``.

    Examples
    --------
    >>> cf_attributes("lst")["standard_name"]
    'surface_temperature'
    >>> cf_attributes("soil_moisture_std")["standard_name"]
    'volume_fraction_of_condensed_water_in_soil standard_error'
    >>> cf_attributes("banana")
    {}
    """
    from . import datasets

    if not isinstance(variable_name, str):
        return {}
    name = variable_name.lower()
    std = name.endswith("_std")
    if std:
        name = name[: -len("_std")]
    name = _ALIASES.get(name, getattr(datasets, "_ALIASES", {}).get(name, name))
    if name not in datasets.VARIABLES:
        return {}
    attrs = {key: datasets.VARIABLES[name][key] for key in ("standard_name", "long_name", "units")}
    if std:
        attrs["standard_name"] += " standard_error"
        attrs["long_name"] = f"standard deviation of the {attrs['long_name']}"
    return attrs


# ----------------------------------------------------------------------- write


def _version():
    try:
        from . import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, datetime.date, datetime.datetime)):
        return str(value)
    return repr(value)


def _clean_attrs(attrs):
    """Attribute values netCDF can store: no None, no bools, no dicts."""
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        elif isinstance(value, (dict, list, tuple)) and not _is_numeric_list(value):
            value = json.dumps(value, default=_json_default)
        elif not isinstance(value, (str, int, float, np.number, np.ndarray, list, tuple)):
            value = str(value)
        out[key] = value
    return out


def _is_numeric_list(value):
    if isinstance(value, dict):
        return False
    try:
        array = np.asarray(value)
    except Exception:
        return False
    return array.ndim == 1 and array.dtype.kind in "iuf"


def _chunksizes(da, chunks, compression):
    if da.ndim == 0 or 0 in da.shape:
        return None
    chunks = chunks or {}
    sizes = []
    for dim, size in zip(da.dims, da.shape, strict=True):
        if dim in chunks:
            sizes.append(int(min(max(int(chunks[dim]), 1), size)))
        elif dim in ("y", "x"):
            sizes.append(min(size, CHUNK_SIDE))
        elif dim == "time" or da.ndim > 2:
            sizes.append(1 if dim == "time" or {"y", "x"} <= set(da.dims) else size)
        else:
            sizes.append(size)
    if not compression and not chunks:
        return None
    return tuple(sizes)


def _prepare(obj, path, compression, chunks, attrs, parameters):
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=obj.name if obj.name is not None else "value")
    elif not isinstance(obj, xr.Dataset):
        raise TypeError(f"write_netcdf writes an xarray DataArray or Dataset, got {type(obj).__name__}.")
    if not 0 <= int(compression) <= 9:
        raise ValueError(f"compression must be a zlib level from 0 (none) to 9, got {compression!r}.")
    data = obj.copy()
    crs = grid_module.get_crs(data) if {"y", "x"} <= set(data.dims) else None
    if "spatial_ref" in data.variables:
        data = data.drop_vars("spatial_ref")
    for name in list(data.data_vars):
        if data[name].dtype == bool:
            flags = data[name].astype("int8")
            flags.attrs.setdefault("flag_values", np.array([0, 1], dtype="int8"))
            flags.attrs.setdefault("flag_meanings", "false true")
            data[name] = flags
    for name in list(data.variables):
        data[name].attrs = _clean_attrs({k: v for k, v in data[name].attrs.items() if k != "grid_mapping"})
    if crs is not None:
        data = grid_module.set_crs(data, crs)
    elif {"y", "x"} <= set(data.dims):
        import warnings

        warnings.warn(
            f"Writing {path.name} without a CRS: readers will not know where the grid is. "
            f"Declare it first, e.g. `downscale.grid.set_crs(data, 'EPSG:32632')`.",
            stacklevel=3,
        )
    geographic = crs is not None and crs.is_geographic
    axis_attrs = {
        "x": ("longitude", "degrees_east", "X") if geographic else ("projection_x_coordinate", "m", "X"),
        "y": ("latitude", "degrees_north", "Y") if geographic else ("projection_y_coordinate", "m", "Y"),
    }
    for axis, (standard_name, units, letter) in axis_attrs.items():
        if axis in data.coords:
            data[axis].attrs.setdefault("standard_name", standard_name)
            data[axis].attrs.setdefault("axis", letter)
            if crs is not None and not geographic:
                unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
                units = "m" if unit in ("metre", "meter") else unit
            data[axis].attrs.setdefault("units", units)
    if "time" in data.coords:
        data["time"].attrs.setdefault("standard_name", "time")
        data["time"].attrs.setdefault("axis", "T")

    encoding = {}
    for name, variable in data.variables.items():
        old = variable.encoding
        variable.encoding = {}
        enc = {k: old[k] for k in ("dtype", "scale_factor", "add_offset", "units", "calendar") if k in old}
        is_coord = name in data.coords
        if np.issubdtype(variable.dtype, np.floating):
            enc["_FillValue"] = None if is_coord else np.nan
        if not is_coord and variable.dtype.kind in "iuf":
            for key, value in cf_attributes(name).items():
                variable.attrs.setdefault(key, value)
            variable.attrs.setdefault("long_name", str(name).replace("_", " "))
            if compression:
                enc.update(zlib=True, complevel=int(compression))
            sizes = _chunksizes(variable, chunks, compression)
            if sizes is not None:
                enc["chunksizes"] = sizes
        encoding[name] = enc

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{now}: written by downscale {_version()} (downscale.io.write_netcdf)"
    global_attrs = dict(data.attrs)
    if attrs:
        global_attrs.update(attrs)
    history = global_attrs.get("history")
    global_attrs["history"] = f"{line}\n{history}" if history else line
    global_attrs["Conventions"] = "CF-1.8"
    global_attrs["downscale_version"] = _version()
    if parameters is not None:
        global_attrs["downscale_parameters"] = json.dumps(parameters, sort_keys=True, default=_json_default)
    global_attrs[COMPLETE_ATTRIBUTE] = 1
    data.attrs = _clean_attrs(global_attrs)
    return data, encoding


def write_netcdf(
    obj, path, engine: str = "netcdf4", compression: int = 4, chunks=None, attrs=None, parameters=None
):
    """Write a DataArray or Dataset to a CF-1.8 netCDF file, atomically.

    The data are written to a temporary file next to ``path``, flushed to
    disk (``fsync``) and renamed onto ``path`` (``os.replace``), so an
    interrupted or failed write (an exception, ``KeyboardInterrupt``) never
    leaves a half file under the final name, and an existing file there is
    kept intact. The temporary file is removed on any failure.

    What is written:

    * global ``Conventions = "CF-1.8"``, a ``history`` line (UTC time stamp and
      package version, newest first), ``downscale_version``, ``parameters``
      as a JSON string attribute ``downscale_parameters``, and
      ``downscale_complete = 1`` (:data:`COMPLETE_ATTRIBUTE`);
    * per data variable: ``standard_name`` / ``long_name`` / ``units`` from
      :func:`cf_attributes` where the name is known (existing attributes
      win), ``grid_mapping`` pointing at a ``spatial_ref`` variable with the
      CRS, ``_FillValue = NaN`` for floats, zlib compression, and chunks of at
      most 256 x 256 cells in space and 1 step in time; boolean masks as
      ``int8`` flags (``flag_values``, ``flag_meanings``);
    * CF axis attributes on ``x``, ``y`` and ``time``.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        An unnamed DataArray is written as variable ``value``.
    path : str or pathlib.Path
        Destination; its folder is created if missing.
    engine : {"netcdf4", "h5netcdf"}
    compression : int, default 4
        zlib level, 0 for none.
    chunks : dict, optional
        Chunk size per dimension, overriding the defaults.
    attrs : dict, optional
        Extra global attributes.
    parameters : dict, optional
        Parameters of the run, stored as JSON (values JSON cannot hold are stored as their ``repr``).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((3, 4), 1000.0, crs="EPSG:32632")
    >>> lst = xr.DataArray(np.full((3, 4), 290.0), dims=("y", "x"), coords=g.coords, name="lst")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "lst.nc"
    >>> _ = write_netcdf(lst, path, parameters={"factor": 25})
    >>> back = read_netcdf(path)
    >>> back.attrs["units"], back.rio.crs.to_epsg()
    ('K', 32632)
    """
    path = Path(path)
    if engine not in ("netcdf4", "h5netcdf"):
        raise ValueError(f"engine must be 'netcdf4' or 'h5netcdf', got {engine!r}.")
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    data, encoding = _prepare(obj, path, compression, chunks, attrs, parameters)
    temporary = directory / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        data.to_netcdf(temporary, engine=engine, encoding=encoding, format="NETCDF4")
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory):
    """Make the rename itself durable (best effort: not every platform can open a directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ------------------------------------------------------------------------ read


def read_netcdf(
    path, variable=None, engine=None, require_crs: bool = True, crs=None, sort: bool = False, chunks=None
):
    """Open a netCDF file as a grid: dims ``(..., y, x)``, regular sorted coordinates, a CRS.

    Dimensions named ``lat``/``lon`` or ``latitude``/``longitude`` are renamed
    to ``y``/``x`` automatically, and grid variables are transposed to
    ``(..., y, x)``. The CRS is read from the CF grid mapping (rioxarray).
    Data are loaded into memory and the file closed, unless ``chunks`` asks
    for lazy dask arrays.

    Parameters
    ----------
    path : str or pathlib.Path
    variable : str, optional
        Return this variable as a DataArray. Without it, a file with exactly
        one grid variable (dims ``y``, ``x``) gives a DataArray, otherwise a Dataset.
    engine : str, optional
        xarray engine (``"netcdf4"``, ``"h5netcdf"``); default: xarray's choice.
    require_crs : bool, default True
        Refuse a file without a CRS (unless ``crs`` declares one).
    crs : optional
        CRS of a file that has none (anything :class:`pyproj.CRS` accepts). A
        file whose own CRS differs is refused rather than silently relabelled.
    sort : bool, default False
        Sort unsorted ``y``/``x`` coordinates (increasing) instead of refusing them.
    chunks : optional
        Passed to :func:`xarray.open_dataset` (dask chunks).

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, what is wrong and the fix: no CRS, a CRS that
        contradicts ``crs``, unsorted or irregular coordinates, missing
        variable (listing the available ones), missing spatial dimensions.

    Warns
    -----
    UserWarning
        When a grid variable is NaN everywhere (often a fill-value problem;
        a warning, not an error, since a fully clouded scene is legitimate).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, xarray as xr
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "plain.nc"
    >>> xr.Dataset({"t": (("lat", "lon"), np.zeros((2, 3)))},
    ...            coords={"lat": [1.0, 0.0], "lon": [0.0, 1.0, 2.0]}).to_netcdf(path)
    >>> read_netcdf(path, crs="EPSG:4326").dims
    ('y', 'x')
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No such netCDF file: {path}. Check the path (relative paths start at {Path.cwd()})."
        )
    try:
        data = xr.open_dataset(path, engine=engine, decode_coords="all", chunks=chunks)
    except Exception as error:  # netCDF4 and h5py raise many types for damaged files
        raise ValueError(
            f"Cannot read {path} as netCDF ({type(error).__name__}: {error}). Is the file complete? "
            f"A file cut short by an interrupted write must be written again."
        ) from error
    if not chunks:
        # Load and close, so the file can be overwritten (atomically) while the data is in use.
        data = data.load()
        data.close()

    renamed = []
    for y_name, x_name in _SPATIAL_RENAMES:
        if "y" not in data.dims and "x" not in data.dims and y_name in data.dims and x_name in data.dims:
            data = data.rename({y_name: "y", x_name: "x"})
            renamed = [y_name, x_name]
    if variable is not None and variable not in data.data_vars:
        raise ValueError(
            f"{path} has no variable {variable!r}; it has {sorted(map(str, data.data_vars))}. "
            f"Pass one of those names as variable=."
        )
    if variable is not None:
        data = data[[variable]]

    if not {"y", "x"} <= set(data.dims):
        raise ValueError(
            f"{path}: the file must have spatial dimensions ('y', 'x') (lat/lon and latitude/longitude "
            f"are renamed automatically); it has {tuple(data.dims)}. Rename them, e.g. "
            f"`xr.open_dataset(path).rename({{'rlat': 'y', 'rlon': 'x'}})`, and write the file again."
        )
    for axis in ("y", "x"):
        if axis not in data.coords:
            raise ValueError(
                f"{path} has a '{axis}' dimension but no '{axis}' coordinate; a grid needs cell-centre "
                f"coordinates. Assign them, e.g. `data.assign_coords({axis}=...)`, and write the file again."
            )
    if sort:
        data = data.sortby(["y", "x"])
    for axis in ("y", "x"):
        steps = np.diff(np.asarray(data[axis].values, dtype=float))
        if steps.size and not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError(
                f"{path}: the '{axis}' coordinate is not sorted. Sort it, e.g. "
                f"`xr.open_dataset('{path.name}').sortby('{axis}')`, and write the file again, or pass "
                f"sort=True to sort on reading."
            )
    for name in data.data_vars:
        if {"y", "x"} <= set(data[name].dims):
            data[name] = data[name].transpose(..., "y", "x")

    file_crs = grid_module.get_crs(data)
    if crs is not None:
        import pyproj

        declared = pyproj.CRS.from_user_input(crs)
        if file_crs is not None and not file_crs.equals(declared):
            raise ValueError(
                f"{path} is in {grid_module._crs_name(file_crs)} but crs={grid_module._crs_name(declared)!r} "
                f"was given. Drop crs= to use the file's CRS; to change CRS, reproject the data "
                f"(e.g. `downscale.align.to_nested`) instead of relabelling it."
            )
        if file_crs is None:
            data = grid_module.set_crs(data, declared)
    elif file_crs is None and require_crs:
        hint = (
            f" Its coordinates were named {renamed[0]}/{renamed[1]}, so it is probably geographic."
            if renamed
            else ""
        )
        raise ValueError(
            f"{path} has no CRS (no grid_mapping variable).{hint} Declare it with "
            f"`read_netcdf(path, crs='EPSG:4326')` (or the right code), or fix the file once with "
            f"`data.rio.write_crs(...)` and `downscale.io.write_netcdf`. Use require_crs=False to read it anyway."
        )

    try:
        grid_module.check_grid(data, name="data")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None

    if not chunks:
        for name, da in data.data_vars.items():
            if {"y", "x"} <= set(da.dims) and da.dtype.kind == "f" and bool(da.isnull().all()):
                import warnings

                warnings.warn(
                    f"{path}: '{name}' is NaN everywhere. If that is unexpected, check its _FillValue, "
                    f"valid_range and scale_factor attributes.",
                    stacklevel=2,
                )
    if variable is None:
        grid_variables = [name for name in data.data_vars if {"y", "x"} <= set(data[name].dims)]
        if len(grid_variables) == 1:
            variable = grid_variables[0]
    if variable is not None:
        out = data[variable]
        out.attrs.setdefault("source_file", str(path))
        return out
    return data
