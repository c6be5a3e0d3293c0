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
    path = io.write_netcdf(
        scene.truth, tmp_path / "sm.nc", engine=engine, parameters={"seed": 1, "trend": "rf"}
    )
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
    with pytest.raises(
        ValueError, match=r"unsorted.nc: the 'x' coordinate is not sorted. Sort it, e.g. .*sortby\('x'\)"
    ):
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


# --------------------------------------------------------------- more metadata


def test_geographic_grid_round_trip_with_axis_attributes(tmp_path):
    grid = ds.grid.make_grid((4, 5), 0.25, origin=(7.0, 45.0), crs="EPSG:4326")
    field = xr.DataArray(
        np.arange(20.0).reshape(4, 5).astype("float32"), dims=("y", "x"), coords=grid.coords, name="lst"
    )
    path = io.write_netcdf(field, tmp_path / "geo.nc", engine="h5netcdf", attrs={"institution": "test"})
    with xr.open_dataset(path, decode_coords="all") as raw:
        assert raw.rio.crs.to_epsg() == 4326
        assert raw["x"].attrs["standard_name"] == "longitude"
        assert raw["y"].attrs["units"] == "degrees_north"
        assert "_FillValue" not in raw["x"].encoding  # CF: no fill values on coordinates
        assert raw["lst"].dtype == np.float32
        assert raw["lst"].attrs["units"] == "K"  # filled in from cf_attributes
        assert raw.attrs["institution"] == "test"
        assert raw.attrs[io.COMPLETE_ATTRIBUTE] == 1
    back = io.read_netcdf(path)
    np.testing.assert_array_equal(back.values, field.values)
    np.testing.assert_array_equal(back.x.values, field.x.values)


def test_projected_axis_attributes_and_history_newest_first(tmp_path, scene):
    first = io.write_netcdf(scene.coarse, tmp_path / "a.nc")
    with xr.open_dataset(first, decode_coords="all") as previous:  # a Dataset keeps the global history
        again = io.write_netcdf(previous.load(), tmp_path / "b.nc")
    with xr.open_dataset(again) as raw:
        assert raw["x"].attrs["standard_name"] == "projection_x_coordinate"
        assert raw["y"].attrs["units"] == "m"
        lines = raw.attrs["history"].splitlines()
    assert len(lines) == 2 and all("written by downscale" in line for line in lines)
    assert lines[0] >= lines[1]  # ISO time stamps: the newest line first


def test_parameters_json_keeps_what_json_cannot_hold_as_text(tmp_path, scene):
    from sklearn.linear_model import LinearRegression

    parameters = {"factor": np.int64(10), "alpha": np.float32(0.5), "trend": LinearRegression(), "flag": True}
    path = io.write_netcdf(scene.coarse, tmp_path / "p.nc", parameters=parameters)
    with xr.open_dataset(path) as raw:
        stored = json.loads(raw.attrs["downscale_parameters"])
    assert stored == {"factor": 10, "alpha": 0.5, "trend": "LinearRegression()", "flag": True}


def test_compression_and_chunk_options(tmp_path):
    grid = ds.grid.make_grid((300, 270), 1000.0, crs="EPSG:32632")
    field = xr.DataArray(np.zeros((300, 270)), dims=("y", "x"), coords=grid.coords, name="no2")
    path = io.write_netcdf(field, tmp_path / "big.nc")
    with xr.open_dataset(path) as raw:
        assert raw["no2"].encoding["chunksizes"] == (256, 256)
        assert raw["no2"].attrs["standard_name"] == "troposphere_mole_content_of_nitrogen_dioxide"
    path = io.write_netcdf(field, tmp_path / "plain.nc", compression=0)
    with xr.open_dataset(path) as raw:
        assert not raw["no2"].encoding.get("zlib", False)
    path = io.write_netcdf(field, tmp_path / "custom.nc", chunks={"y": 100, "x": 1000})
    with xr.open_dataset(path) as raw:
        assert raw["no2"].encoding["chunksizes"] == (100, 270)
    with pytest.raises(ValueError, match=r"compression must be a zlib level from 0 \(none\) to 9, got 12"):
        io.write_netcdf(field, tmp_path / "bad.nc", compression=12)
    with pytest.raises(ValueError, match=r"engine must be 'netcdf4' or 'h5netcdf', got 'zarr'"):
        io.write_netcdf(field, tmp_path / "bad.nc", engine="zarr")
    with pytest.raises(TypeError, match=r"writes an xarray DataArray or Dataset, got ndarray"):
        io.write_netcdf(field.values, tmp_path / "bad.nc")


def test_writing_without_a_crs_warns(tmp_path):
    field = xr.DataArray(
        np.zeros((2, 2)), dims=("y", "x"), coords={"y": [1.5, 0.5], "x": [0.5, 1.5]}, name="a"
    )
    with pytest.warns(UserWarning, match=r"Writing nocrs.nc without a CRS"):
        io.write_netcdf(field, tmp_path / "nocrs.nc")
    back = io.read_netcdf(tmp_path / "nocrs.nc", require_crs=False)
    assert ds.grid.get_crs(back) is None


def test_overwriting_the_file_that_was_read(tmp_path, scene):
    path = io.write_netcdf(scene.coarse, tmp_path / "same.nc")
    data = io.read_netcdf(path)
    io.write_netcdf(data * 2, path)
    np.testing.assert_array_equal(io.read_netcdf(path).values, 2 * scene.coarse.values)


@pytest.mark.parametrize("engine", ["netcdf4", "h5netcdf"])
def test_a_real_write_error_also_leaves_the_old_file_and_no_temporary(tmp_path, scene, engine):
    path = io.write_netcdf(scene.coarse, tmp_path / "keep.nc", engine=engine)
    before = path.read_bytes()
    bad = scene.coarse.copy()
    bad.attrs["weird"] = {1, 2}  # a set: turned into text, not an error
    io.write_netcdf(bad, tmp_path / "ok_attrs.nc", engine=engine)
    # The engine refuses the name only once it has created the file: a genuine half-way failure.
    with pytest.raises(ValueError, match="Forward slashes"):
        io.write_netcdf(scene.coarse.rename("soil/moisture"), path, engine=engine)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.nc", "ok_attrs.nc"]


def test_more_read_errors_and_fixes(tmp_path, scene):
    path = io.write_netcdf(scene.coarse, tmp_path / "utm.nc")
    with pytest.raises(
        ValueError, match=r"utm.nc is in EPSG:32632 but crs='EPSG:3035' was given\. Drop crs="
    ):
        io.read_netcdf(path, crs="EPSG:3035")
    assert ds.grid.get_crs(io.read_netcdf(path, crs="EPSG:32632")).to_epsg() == 32632

    latlon = tmp_path / "latlon.nc"
    xr.Dataset(
        {"t": (("lat", "lon"), np.zeros((2, 3)))}, coords={"lat": [1.0, 0.0], "lon": [0.0, 1.0, 2.0]}
    ).to_netcdf(latlon)
    with pytest.raises(
        ValueError, match=r"latlon.nc has no CRS .*named lat/lon, so it is probably geographic"
    ):
        io.read_netcdf(latlon)

    unsorted = tmp_path / "unsorted.nc"
    scene.coarse.isel(y=[2, 0, 1, 3, 4, 5]).to_netcdf(unsorted)
    with pytest.raises(ValueError, match=r"'y' coordinate is not sorted.*or pass sort=True"):
        io.read_netcdf(unsorted)
    fixed = io.read_netcdf(unsorted, sort=True)
    np.testing.assert_array_equal(fixed.sel(y=scene.coarse.y).values, scene.coarse.values)

    irregular = tmp_path / "irregular.nc"
    scene.coarse.assign_coords(x=[0.0, 1.0, 2.0, 3.0, 4.0, 9.0]).to_netcdf(irregular)
    with pytest.raises(ValueError, match=r"irregular.nc: The data 'x' coordinate is not regular"):
        io.read_netcdf(irregular)

    no_coords = tmp_path / "no_coords.nc"
    xr.Dataset({"a": (("y", "x"), np.zeros((2, 2)))}).to_netcdf(no_coords)
    with pytest.raises(ValueError, match=r"no_coords.nc has a 'y' dimension but no 'y' coordinate"):
        io.read_netcdf(no_coords)

    transposed = tmp_path / "xy.nc"
    scene.coarse.transpose("x", "y", ...).to_netcdf(transposed)
    assert io.read_netcdf(transposed).dims[-2:] == ("y", "x")

    two = io.write_netcdf(scene.coarse.to_dataset().assign(other=scene.coarse * 2), tmp_path / "two.nc")
    assert isinstance(io.read_netcdf(two), xr.Dataset)
    assert io.read_netcdf(two, variable="other").name == "other"


def test_cf_attributes_aliases_std_and_unknown():
    assert io.cf_attributes("pr") == io.cf_attributes("precipitation")
    assert io.cf_attributes("LST")["units"] == "K"
    std = io.cf_attributes("lst_std")
    assert std == {
        "standard_name": "surface_temperature standard_error",
        "long_name": "standard deviation of the land surface temperature",
        "units": "K",
    }
    assert io.cf_attributes("soil_moisture")["units"] == "m3 m-3"
    assert io.cf_attributes("banana") == {} and io.cf_attributes(None) == {}


def test_nan_only_variable_warns_on_reading(tmp_path, scene):
    path = io.write_netcdf(scene.coarse * np.nan, tmp_path / "empty.nc")
    with pytest.warns(UserWarning, match=r"empty.nc: 'soil_moisture' is NaN everywhere.*_FillValue"):
        back = io.read_netcdf(path)
    assert np.isnan(back.values).all()
