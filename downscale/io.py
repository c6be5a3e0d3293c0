"""CF-1.8 netCDF reading and writing: atomic writes, grid mapping, compression and provenance.

Every file this package writes goes through :func:`write_netcdf`: the data is
written to a temporary file in the destination folder and renamed over the
final name only once complete, so an interrupted or failed write never leaves
a half file under the final name, and an earlier file there stays intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from . import grid as grid_module

__all__ = ["cf_attributes", "read_netcdf", "write_netcdf", "COMPLETE_ATTRIBUTE"]

#: Global attribute written into every file; a file without it was not finished by this package.
COMPLETE_ATTRIBUTE = "downscale_complete"

_RENAMES = {"lat": "y", "latitude": "y", "lon": "x", "longitude": "x"}


def cf_attributes(variable: str) -> dict:
    """CF attributes (``standard_name``, ``long_name``, ``units``) of a variable the package knows.

    Unknown names give an empty dict.

    Examples
    --------
    >>> cf_attributes("lst")["standard_name"]
    'surface_temperature'
    >>> cf_attributes("snow_depth")
    {}
    """
    from .datasets import _ALIASES, VARIABLES

    meta = VARIABLES.get(_ALIASES.get(variable, variable))
    if meta is None:
        return {}
    return {key: meta[key] for key in ("standard_name", "long_name", "units")}


def _encoding_for(da, compression, chunks):
    encoding = {}
    if np.issubdtype(da.dtype, np.floating):
        encoding["_FillValue"] = np.nan
    elif da.dtype == bool:
        encoding["dtype"] = "int8"
    if compression and da.ndim > 0 and da.dtype != object:
        encoding["zlib"] = True
        encoding["complevel"] = int(compression)
        sizes = []
        for dim, size in zip(da.dims, da.shape):
            wanted = (chunks or {}).get(dim)
            if wanted is None:
                wanted = 256 if dim in ("y", "x") else 1 if dim == "time" else size
            sizes.append(max(1, min(int(wanted), size)))
        encoding["chunksizes"] = tuple(sizes)
    return encoding


def write_netcdf(obj, path, *, engine="netcdf4", compression=4, chunks=None, attrs=None, parameters=None):
    """Write a DataArray or Dataset to a CF-1.8 netCDF file, atomically.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        Gridded data; its CRS (``spatial_ref``) is written as the CF grid mapping.
    path : str or path-like
        Destination. Its folder is created if missing.
    engine : {"netcdf4", "h5netcdf"}
    compression : int
        zlib level (0 turns compression off).
    chunks : dict, optional
        On-disk chunk size per dimension (default: 256 along ``y``/``x``, 1 along ``time``).
    attrs : dict, optional
        Extra global attributes.
    parameters : dict, optional
        Stored as JSON in the global attribute ``downscale_parameters`` (provenance).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", shape=(50, 50), factor=10)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "lst.nc"
    >>> _ = write_netcdf(scene.coarse, path, parameters={"seed": 0})
    >>> back = read_netcdf(path)
    >>> back.attrs["units"], ds.grid.get_crs(back).to_epsg()
    ('K', 32632)
    """
    from . import __version__

    if isinstance(obj, xr.DataArray):
        dataset = obj.to_dataset(name=obj.name or "value")
    elif isinstance(obj, xr.Dataset):
        dataset = obj.copy()
    else:
        raise TypeError(f"write_netcdf expects an xarray DataArray or Dataset, got {type(obj).__name__}.")
    if engine not in ("netcdf4", "h5netcdf"):
        raise ValueError(f"engine must be 'netcdf4' or 'h5netcdf', got {engine!r}.")
    crs = grid_module.get_crs(dataset)
    if crs is not None:
        dataset = grid_module.set_crs(dataset, crs)
    for name in dataset.data_vars:
        variable = dataset[name]
        if variable.dtype == bool:
            dataset[name] = variable.astype("int8")
            dataset[name].attrs.update(variable.attrs)
            dataset[name].attrs.setdefault("flag_values", np.array([0, 1], dtype="int8"))
            dataset[name].attrs.setdefault("flag_meanings", "false true")
        for key, value in cf_attributes(str(name)).items():
            dataset[name].attrs.setdefault(key, value)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = dataset.attrs.get("history", "")
    line = f"{stamp}: written by downscale {__version__}"
    dataset.attrs.update(
        {
            "Conventions": "CF-1.8",
            "history": f"{history}\n{line}".strip(),
            "downscale_version": __version__,
            **(attrs or {}),
        }
    )
    if parameters is not None:
        dataset.attrs["downscale_parameters"] = json.dumps(parameters, default=str, sort_keys=True)
    dataset.attrs[COMPLETE_ATTRIBUTE] = 1
    encoding = {name: _encoding_for(dataset[name], compression, chunks) for name in dataset.data_vars}
    for name in dataset.data_vars:
        dataset[name].encoding = {}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        dataset.to_netcdf(temporary, engine=engine, encoding=encoding)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave the temporary file behind.
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def read_netcdf(path, variable=None, *, engine=None, require_crs=True, crs=None, chunks=None):
    """Read a gridded netCDF file, checking that it is a grid this package can use.

    Dimensions named ``lat``/``latitude`` and ``lon``/``longitude`` are renamed
    to ``y``/``x``. Coordinates must be sorted and regular.

    Parameters
    ----------
    path : str or path-like
    variable : str, optional
        Return this variable as a DataArray. By default, a file with one data
        variable gives a DataArray and a file with several gives a Dataset.
    engine : str, optional
        xarray backend (``"netcdf4"``, ``"h5netcdf"``).
    require_crs : bool
        Refuse files without a CRS (unless ``crs`` declares one).
    crs : optional
        CRS to declare for a file that has none (a file's own CRS wins).
    chunks : dict, optional
        Open lazily with dask chunks.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such netCDF file: {path}")
    try:
        dataset = xr.open_dataset(path, engine=engine, decode_coords="all", chunks=chunks)
    except Exception as error:  # netCDF4 and h5py raise many types for damaged files
        raise ValueError(f"Cannot read {path} as netCDF ({type(error).__name__}: {error}). Is the file complete?") from error
    renames = {name: new for name, new in _RENAMES.items() if name in dataset.dims and new not in dataset.dims}
    if renames:
        dataset = dataset.rename(renames)
    if not chunks:
        dataset = dataset.load()
        dataset.close()
    if variable is not None and variable not in dataset.data_vars:
        raise ValueError(
            f"{path} has no variable {variable!r}; it has {sorted(map(str, dataset.data_vars))}. "
            f"Pass one of those names."
        )
    for axis in ("y", "x"):
        if axis in dataset.coords:
            values = np.asarray(dataset[axis].values, dtype=float)
            steps = np.diff(values)
            if values.size > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
                raise ValueError(
                    f"{path}: the '{axis}' coordinate is not sorted. Sort it, e.g. "
                    f"`xr.open_dataset('{path.name}').sortby('{axis}')`, and write the file again."
                )
    try:
        grid_module.check_grid(dataset, name=path.name)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if grid_module.get_crs(dataset) is None:
        if crs is not None:
            dataset = grid_module.set_crs(dataset, crs)
        elif require_crs:
            raise ValueError(
                f"{path} has no CRS (no grid_mapping variable). Declare it with "
                f"`read_netcdf(path, crs='EPSG:4326')` (or the right code), or fix the file with "
                f"`data.rio.write_crs(...)`."
            )
    if variable is None:
        names = [name for name in dataset.data_vars if {"y", "x"} <= set(dataset[name].dims)]
        if len(names) == 1:
            variable = names[0]
    if variable is not None:
        out = dataset[variable]
        out.attrs.setdefault("source_file", str(path))
        return out
    return dataset
