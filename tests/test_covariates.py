"""Location, NDVI, build and aggregate: analytic values, contracts (names, attributes, grids) and bad input."""

import numpy as np
import pytest
import xarray as xr

import downscale as ds
from downscale.covariates import location, ndvi

UTM = "EPSG:32632"


def on_grid(values, cell_size=1000.0, crs=UTM, origin=(500_000.0, 5_000_000.0), name=None):
    values = np.asarray(values)
    g = ds.grid.make_grid(values.shape[-2:], cell_size, origin=origin, crs=crs)
    dims = ("y", "x") if values.ndim == 2 else ("time", "y", "x")
    coords = dict(g.coords)
    if values.ndim == 3:
        coords["time"] = np.arange(values.shape[0])
    da = xr.DataArray(values, dims=dims, coords=coords, name=name)
    return ds.grid.set_crs(da, crs) if crs is not None else da


# ------------------------------------------------------------------ location


def test_location_features_names_values_and_lonlat():
    g = ds.grid.make_grid((4, 5), 1000.0, origin=(500_000.0, 5_000_000.0), crs=UTM)
    features = location.location_features(g, angles=(30, 45))
    assert list(features.data_vars) == ["easting", "northing", "lon", "lat", "oblique_30", "oblique_45"]
    x, y = np.meshgrid(g.x.values, g.y.values)
    np.testing.assert_array_equal(features["easting"].values, x)
    np.testing.assert_array_equal(features["northing"].values, y)
    a = np.deg2rad(30)
    np.testing.assert_allclose(features["oblique_30"].values, x * np.cos(a) + y * np.sin(a))
    # UTM zone 32 has its central meridian at 9 E; the false easting 500 km sits on it.
    assert features["lon"].values[0, 0] == pytest.approx(
        9.0 + 0.5 / (111.32 * np.cos(np.deg2rad(45.1))), abs=1e-3
    )
    assert 45.0 < features["lat"].values.mean() < 45.2
    for da in features.data_vars.values():
        assert da.attrs["units"] and da.attrs["long_name"]


def test_location_on_a_geographic_grid_and_without_crs():
    g = ds.grid.make_grid((3, 3), 0.5, origin=(5.0, 50.0), crs="EPSG:4326")
    features = location.location_features(g, angles=[60])
    assert list(features.data_vars) == ["lon", "lat", "oblique_60"]
    assert features["oblique_60"].attrs["units"] == "degree"
    bare = ds.grid.make_grid((3, 3), 1000.0)
    with pytest.raises(ValueError, match=r"The grid has no CRS, so longitude and latitude are unknown"):
        location.location_features(bare)
    assert list(location.location_features(bare, lonlat=False, angles=[]).data_vars) == [
        "easting",
        "northing",
    ]


def test_distance_to_coast_on_a_square_island():
    land = np.zeros((21, 21), bool)
    land[5:16, 5:16] = True
    distance = location.distance_to_coast(on_grid(land, 500.0)).values
    # A land cell k cells inside the square is k + 1 cells from the nearest sea cell centre.
    assert distance[10, 10] == pytest.approx(6 * 500.0)
    assert distance[5, 10] == pytest.approx(500.0)
    assert distance[0, 10] == pytest.approx(-5 * 500.0)  # offshore: minus the distance to land
    assert distance[2, 2] == pytest.approx(-np.hypot(3, 3) * 500.0)
    unsigned = location.distance_to_coast(on_grid(land, 500.0), signed=False).values
    assert np.all(unsigned[~land] == 0) and np.all(unsigned[land] > 0)


def test_distance_to_coast_on_a_round_island():
    g = ds.grid.make_grid((101, 101), 100.0, origin=(-5050.0, -5050.0), crs=UTM)
    x, y = np.meshgrid(g.x.values, g.y.values)
    radius = 3000.0
    r = np.hypot(x, y)
    land = r < radius
    distance = location.distance_to_coast(on_grid(land, 100.0, origin=(-5050.0, -5050.0))).values
    # The coast is the circle; cell-centre distances differ from radius - r by at most one cell.
    np.testing.assert_allclose(distance[land], (radius - r)[land], atol=100.0)
    np.testing.assert_allclose(-distance[~land], (r - radius)[~land], atol=100.0)


def test_distance_to_coast_on_a_latlon_grid_is_great_circle():
    g = ds.grid.make_grid((40, 40), 0.05, origin=(10.0, 59.0), crs="EPSG:4326")
    land = np.zeros((40, 40), bool)
    land[:, 20:] = True  # sea to the west of 11 E
    distance = location.distance_to_coast(on_grid(land, 0.05, crs="EPSG:4326", origin=(10.0, 59.0))).values
    lat = g.y.values
    # Along a row, the nearest sea cell is the last one to the west: 1 cell of 0.05 deg lon away.
    spacing = ds.grid.EARTH_RADIUS * np.deg2rad(0.05) * np.cos(np.deg2rad(lat))
    np.testing.assert_allclose(distance[:, 20], spacing, rtol=1e-4)
    np.testing.assert_allclose(distance[:, 25], 6 * spacing, rtol=1e-3)


def test_distance_to_coast_needs_a_coast():
    with pytest.raises(ValueError, match="The land mask has no sea, so there is no coast within the grid"):
        location.distance_to_coast(on_grid(np.ones((4, 4), bool)))
    with pytest.raises(TypeError, match="land must be an xarray DataArray"):
        location.distance_to_coast(np.ones((4, 4), bool))


# ------------------------------------------------------------------ NDVI


def test_ndvi_of_known_reflectances():
    red = on_grid([[0.04, 0.10, 0.25], [0.30, 0.0, 0.2]])
    nir = on_grid([[0.36, 0.30, 0.25], [0.10, 0.0, -0.3]])
    result = ndvi.ndvi_from_reflectance(red, nir).values
    np.testing.assert_allclose(result[0], [0.8, 0.5, 0.0])
    assert result[1, 0] == pytest.approx(-0.5)
    assert np.isnan(result[1, 1])  # no signal
    assert np.isnan(result[1, 2])  # nir + red < 0: meaningless
    # Noisy reflectances (one slightly negative) give |ratio| > 1: clipped to [-1, 1].
    clipped = ndvi.ndvi_from_reflectance(
        on_grid([[-0.01, 0.1], [0.1, 0.1]]), on_grid([[0.3, 0.3], [0.3, 0.3]])
    )
    assert clipped.values[0, 0] == 1.0
    assert clipped.attrs["units"] == "1" and clipped.name == "ndvi"


def test_red_and_nir_of_different_shapes_are_refused():
    red = on_grid(np.full((4, 4), 0.1))
    nir = on_grid(np.full((4, 5), 0.3))
    with pytest.raises(
        ValueError,
        match=r"red and nir must be on the same grid: red has dims \('y', 'x'\) and shape \(4, 4\)",
    ):
        ndvi.ndvi_from_reflectance(red, nir)
    shifted = on_grid(np.full((4, 4), 0.3), origin=(600_000.0, 5_000_000.0))
    with pytest.raises(ValueError, match="same shape but different y/x coordinates"):
        ndvi.ndvi_from_reflectance(red, shifted)


def test_spatial_gap_filling_and_gap_mask():
    values = np.tile(np.linspace(0.1, 0.8, 8), (6, 1))
    clouds = values.copy()
    clouds[2:4, 3] = np.nan
    sea = np.ones((6, 8), bool)
    sea[:, 0] = False
    clouds[:, 0] = np.nan
    filled, gap = ndvi.fill_gaps(on_grid(clouds), land=on_grid(sea))
    # Filled from the nearest valid cell (left or right neighbour, both 0.1 away).
    assert filled.values[2, 3] in (values[2, 2], values[2, 4])
    assert np.all(np.isnan(filled.values[:, 0]))  # the sea is not filled
    assert gap.values.sum() == 2 and gap.values[2, 3] == 1 and gap.values[0, 0] == 0
    assert gap.name == "ndvi_gap" and gap.attrs["units"] == "1"


def test_temporal_gap_filling_is_linear_in_time():
    times = np.array(["2024-06-01", "2024-06-02", "2024-06-05", "2024-06-09"], dtype="datetime64[ns]")
    base = np.full((4, 3, 3), np.nan)
    base[0] = 0.2
    base[3] = 0.6
    base[1, 1, 1] = 0.3
    base[2, 0, 0] = 0.5
    series = on_grid(base).assign_coords(time=times)
    filled, gap = ndvi.fill_gaps(series)
    # 2024-06-05 is 4/8 of the way from 06-01 to 06-09.
    assert filled.values[2, 2, 2] == pytest.approx(0.2 + 0.4 * 4 / 8)
    assert filled.values[2, 1, 1] == pytest.approx(0.3 + 0.3 * 3 / 7)  # from 06-02 (0.3) to 06-09 (0.6)
    assert filled.values[2, 0, 0] == 0.5 and gap.values[2, 0, 0] == 0
    assert gap.values[1].sum() == 8  # all but the observed cell
    # A cell with no valid time at all is filled spatially.
    lonely = base.copy()
    lonely[:, 2, 2] = np.nan
    filled, _ = ndvi.fill_gaps(on_grid(lonely).assign_coords(time=times))
    assert np.isfinite(filled.values).all()


def test_fractional_vegetation_cover():
    cover = ndvi.fractional_vegetation_cover(on_grid([[0.0, 0.2], [0.53, 1.0]]), ndvi_soil=0.2, ndvi_veg=0.86)
    np.testing.assert_allclose(cover.values, [[0.0, 0.0], [0.25, 1.0]])
    with pytest.raises(ValueError, match="must be larger than ndvi_soil"):
        ndvi.fractional_vegetation_cover(on_grid([[0.0, 0.2], [0.5, 1.0]]), ndvi_soil=0.5, ndvi_veg=0.5)


def test_ndvi_product_on_another_grid_is_regridded():
    # A linear NDVI field on a coarse lat/lon grid, brought to a fine UTM grid by bilinear interpolation.
    fine = ds.grid.make_grid((40, 40), 250.0, origin=(500_000.0, 5_000_000.0), crs=UTM)
    product_grid = ds.grid.make_grid((30, 30), 0.01, origin=(8.9, 45.05), crs="EPSG:4326")
    lon, lat = np.meshgrid(product_grid.x.values, product_grid.y.values)
    product = on_grid(
        0.3 + 2.0 * (lon - 9.0) + 1.0 * (lat - 45.1), 0.01, crs="EPSG:4326", origin=(8.9, 45.05)
    )
    result = ndvi.ndvi_features(product, target=fine)
    assert result["ndvi"].shape == (40, 40)
    np.testing.assert_allclose(result["ndvi"].x.values, fine.x.values)
    features = location.location_features(fine, angles=[])
    expected = 0.3 + 2.0 * (features["lon"].values - 9.0) + 1.0 * (features["lat"].values - 45.1)
    np.testing.assert_allclose(result["ndvi"].values, expected, atol=0.002)


def test_ndvi_that_cannot_be_aligned_is_refused():
    fine = ds.grid.make_grid((10, 10), 250.0, origin=(500_000.0, 5_000_000.0), crs=UTM)
    no_crs = on_grid(np.full((5, 5), 0.4), 0.01, crs=None, origin=(9.0, 45.1))
    with pytest.raises(
        ValueError, match="ndvi is on a different grid than the DEM/target, and ndvi has no CRS"
    ):
        ndvi.ndvi_features(no_crs, target=fine)
    far_away = on_grid(np.full((5, 5), 0.4), 0.01, crs="EPSG:4326", origin=(-70.0, -30.0))
    with pytest.raises(ValueError, match="ndvi does not overlap the target grid"):
        ndvi.ndvi_features(far_away, target=fine)
    with pytest.raises(ValueError, match="Give either ndvi, or both red and nir"):
        ndvi.ndvi_features(red=on_grid(np.ones((3, 3))))


# ------------------------------------------------------------------ build and aggregate


@pytest.fixture(scope="module")
def scene():
    return ds.datasets.synthetic_scene("lst", seed=1, shape=(60, 60), factor=10, cell_size=500.0)


def test_build_stacks_everything_with_attributes(scene):
    X = ds.covariates.build(
        dem=scene.dem, ndvi=scene.ndvi, location=True, land=scene.mask, tpi_radii=(2000.0,)
    )
    expected = {
        "elevation", "slope", "northness", "eastness", "profile_curvature", "plan_curvature", "tpi_2km",
        "roughness", "twi", "ndvi", "ndvi_gap", "fvc", "easting", "northing", "lon", "lat",
        "oblique_30", "oblique_60", "oblique_120", "oblique_150", "distance_to_coast",
    }  # fmt: skip
    assert set(X.data_vars) == expected
    assert "x" not in X.data_vars and "y" not in X.data_vars
    for name, da in X.data_vars.items():
        assert da.dims == ("y", "x"), name
        assert da.attrs.get("units") and da.attrs.get("long_name"), name
    assert ds.grid.get_crs(X).to_epsg() == 32632
    np.testing.assert_array_equal(X.x.values, scene.dem.x.values)
    ds.grid.check_grid(X)
    # Every covariate is finite on land, so the pixel table keeps every land pixel.
    table = ds.grid.to_table(X, mask=scene.mask.values)
    assert len(table.features) == int(scene.mask.sum())


def test_build_accepts_any_subset(scene):
    assert list(ds.covariates.build(dem=scene.dem, features=["slope"]).data_vars) == ["slope"]
    only_ndvi = ds.covariates.build(ndvi=scene.ndvi, location=True)
    assert {"ndvi", "fvc", "easting", "lat"} <= set(only_ndvi.data_vars)
    elevation_km = (scene.dem / 1000).assign_attrs(units="km")
    raw = scene.dem.copy()
    raw.attrs = {}
    only_extra = ds.covariates.build(extra={"elevation_km": elevation_km, "raw": raw})
    assert only_extra["elevation_km"].attrs["units"] == "km"
    assert only_extra["raw"].attrs == {"long_name": "raw", "units": "unknown", "grid_mapping": "spatial_ref"}
    with pytest.raises(ValueError, match="build needs at least one gridded input"):
        ds.covariates.build(location=True)
    # The same covariate given as a dict, a named DataArray or a Dataset.
    named = elevation_km.rename("elevation_km")
    for extra in (named, named.to_dataset()):
        again = ds.covariates.build(extra=extra)
        xr.testing.assert_identical(again["elevation_km"], only_extra["elevation_km"])
    with pytest.raises(ValueError, match=r"extra is a DataArray without a name.*extra=field.rename"):
        ds.covariates.build(extra=elevation_km.rename(None))
    with pytest.raises(
        TypeError, match="extra must be a dict of name to DataArray, a Dataset or a named DataArray, got list"
    ):
        ds.covariates.build(extra=[elevation_km])


def test_build_with_an_ndvi_series_has_time_only_where_it_varies(scene):
    series = xr.concat([scene.ndvi, scene.ndvi + 0.05], dim="time").assign_coords(time=[0, 1])
    X = ds.covariates.build(dem=scene.dem, ndvi=series, features=["elevation"])
    assert X["ndvi"].dims == ("time", "y", "x")
    assert X["elevation"].dims == ("y", "x")


def test_build_refuses_mismatched_grids_and_name_clashes(scene):
    other = scene.dem.isel(x=slice(0, 50))
    with pytest.raises(ValueError, match=r"extra\['other'\] is not on the fine grid of the other covariates"):
        ds.covariates.build(dem=scene.dem, extra={"other": other})
    with pytest.raises(ValueError, match="Two covariates are named 'slope'"):
        ds.covariates.build(dem=scene.dem, features=["slope"], extra={"slope": scene.dem})
    with pytest.raises(ValueError, match="would shadow a grid coordinate"):
        ds.covariates.build(dem=scene.dem, features=["slope"], extra={"x": scene.dem})


def test_aggregate_is_the_block_mean_of_the_fine_features(scene):
    X = ds.covariates.build(
        dem=scene.dem, location=True, features=["elevation", "slope", "northness", "eastness"]
    )
    coarse = ds.covariates.aggregate(X, scene.coarse)
    by_factor = ds.covariates.aggregate(X, scene.factor)
    for name in X.data_vars:
        expected = ds.grid.block_mean(X[name], scene.factor)
        np.testing.assert_array_equal(coarse[name].values, expected.values)
        np.testing.assert_array_equal(by_factor[name].values, expected.values)
        assert coarse[name].attrs["cell_methods"] == "area: mean"
        assert coarse[name].attrs["units"] == X[name].attrs["units"]
    np.testing.assert_array_equal(coarse.x.values, scene.coarse.x.values)
    # The block mean of the fine easting is the coarse cell centre.
    np.testing.assert_allclose(coarse["easting"].values[0], scene.coarse.x.values)
    # Aspect is aggregated as the mean unit vector: its length is at most 1.
    assert np.all(np.hypot(coarse["northness"], coarse["eastness"]).values <= 1 + 1e-12)


def test_aggregate_on_a_geographic_grid_is_area_weighted():
    g = ds.grid.make_grid((4, 2), 10.0, origin=(0.0, 50.0), crs="EPSG:4326")
    field = ds.grid.set_crs(
        xr.DataArray(np.repeat([[1.0], [1.0], [0.0], [0.0]], 2, axis=1), dims=("y", "x"), coords=g.coords, name="a",
                     attrs={"units": "1", "long_name": "a"}),
        "EPSG:4326",
    )  # fmt: skip
    coarse = ds.covariates.aggregate(field.to_dataset(), 2)["a"].values
    # Rows nearer the pole are smaller: the north half (1s, 70-90 N) weighs less than the south half.
    area = ds.grid.cell_area(g).values[:, 0]
    assert coarse[0, 0] == pytest.approx(1.0)
    assert coarse[1, 0] == pytest.approx(0.0)
    assert area[0] < area[1]


def test_aggregate_refuses_a_grid_that_does_not_nest(scene):
    X = ds.covariates.build(dem=scene.dem, features=["elevation"])
    wrong = ds.grid.make_grid((7, 7), 4000.0, crs=UTM)
    with pytest.raises(ValueError, match="The grids do not nest"):
        ds.covariates.aggregate(X, wrong)
