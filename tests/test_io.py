"""Tests for CF netCDF I/O: round trips on both engines, atomic writes, clear read errors."""

import json
import os

import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr

import downscale as ds
from downscale import io


@pytest.fixture(scope="module")
def scene():
    return ds.datasets.synthetic_scene("soil_moisture", seed=1, n_times=2, shape=(60, 60), factor=10)


@pytest.mark.parametrize("engine", ["netcdf4", "h5netcdf"])
def test_round_trip_values_attributes_and_crs(tmp_path, scene, engine):
    path = io.write_netcdf(scene.truth, tmp_path / "sm.nc", engine=engine, parameters={"seed": 1, "trend": "rf"})
    raw = xr.open_dataset(path, decode_coords="all", engine=engine)
    assert raw.rio.crs.to_epsg() == 32632
    assert raw.attrs["Conventions"] == "CF-1.8"
    assert "written by downscale" in raw.attrs["history"]
    assert json.loads(raw.attrs["downscale_parameters"]) == {"seed": 1, "trend": "rf"}
    assert raw["soil_moisture"].attrs["standard_name"] == "volume_fraction_of_condensed_water_in_soil"
    assert raw["soil_moisture"].encoding["grid_mapping"] == "spatial_ref"
    encoding = raw["soil_moisture"].encoding
    assert encoding["zlib"] and encoding["complevel"] == 4
    assert encoding["chunksizes"] == (1, 60, 60)
    assert np.isnan(encoding["_FillValue"])
    raw.close()
    back = io.read_netcdf(path, engine=engine)
    np.testing.assert_array_equal(back.values, scene.truth.values)  # NaN over the sea included
    np.testing.assert_array_equal(back.time.values, scene.truth.time.values)
    assert back.attrs["units"] == "m3 m-3"


def test_boolean_masks_are_written_as_flags(tmp_path, scene):
    path = io.write_netcdf(scene.mask, tmp_path / "mask.nc")
    back = io.read_netcdf(path)
    assert back.dtype == np.int8
    np.testing.assert_array_equal(back.values.astype(bool), scene.mask.values)
    assert back.attrs["flag_meanings"] == "false true"


def test_failed_write_leaves_the_old_file_intact(tmp_path, scene, monkeypatch):
    path = tmp_path / "out.nc"
    io.write_netcdf(scene.coarse, path)
    before = path.read_bytes()

    original = xr.Dataset.to_netcdf

    def write_half_then_fail(self, target, *args, **kwargs):
        with open(target, "wb") as stream:
            stream.write(b"CDF\x01 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        io.write_netcdf(scene.truth, path)
    monkeypatch.setattr(xr.Dataset, "to_netcdf", original)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.nc"]


def test_read_errors_name_the_file_and_the_fix(tmp_path, scene):
    with pytest.raises(FileNotFoundError, match="No such netCDF file: .*missing.nc"):
        io.read_netcdf(tmp_path / "missing.nc")

    no_crs = tmp_path / "no_crs.nc"
    scene.coarse.drop_vars("spatial_ref").to_netcdf(no_crs)
    with pytest.raises(ValueError, match=r"no_crs.nc has no CRS .*read_netcdf\(path, crs='EPSG:4326'\)"):
        io.read_netcdf(no_crs)
    declared = io.read_netcdf(no_crs, crs="EPSG:32632")
    assert ds.grid.get_crs(declared).to_epsg() == 32632

    unsorted = tmp_path / "unsorted.nc"
    shuffled = scene.coarse.isel(x=[1, 0, 2, 3, 4, 5])
    shuffled.to_netcdf(unsorted)
    with pytest.raises(ValueError, match=r"unsorted.nc: the 'x' coordinate is not sorted. Sort it, e.g. .*sortby\('x'\)"):
        io.read_netcdf(unsorted)

    with pytest.raises(ValueError, match=r"has no variable 'lst'; it has \['soil_moisture'\]"):
        io.read_netcdf(io.write_netcdf(scene.coarse, tmp_path / "ok.nc"), variable="lst")

    wrong_dims = tmp_path / "dims.nc"
    xr.Dataset({"a": (("row", "col"), np.zeros((2, 2)))}).to_netcdf(wrong_dims)
    with pytest.raises(ValueError, match=r"dims.nc: .*must have spatial dimensions \('y', 'x'\)"):
        io.read_netcdf(wrong_dims)

    broken = tmp_path / "broken.nc"
    broken.write_bytes(b"CDF\x01 this is not really netCDF")
    with pytest.raises(ValueError, match=r"Cannot read .*broken.nc as netCDF .*Is the file complete\?"):
        io.read_netcdf(broken)


def test_lat_lon_dimensions_are_renamed(tmp_path):
    data = xr.Dataset(
        {"t2m": (("lat", "lon"), np.arange(6.0).reshape(2, 3))},
        coords={"lat": [45.5, 45.0], "lon": [7.0, 7.5, 8.0]},
    )
    path = tmp_path / "latlon.nc"
    data.to_netcdf(path)
    back = io.read_netcdf(path, crs="EPSG:4326")
    assert back.dims == ("y", "x")
    assert ds.grid.is_geographic(back)


def test_cf_attributes_for_known_variables():
    assert io.cf_attributes("precipitation") == {
        "standard_name": "lwe_thickness_of_precipitation_amount",
        "long_name": "daily precipitation",
        "units": "mm",
    }
    assert io.cf_attributes("no2")["units"] == "umol m-2"
