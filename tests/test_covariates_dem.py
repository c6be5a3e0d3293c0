"""Terrain features against analytic surfaces, xarray-spatial and numpy.gradient; NaN handling; bad input."""

import numpy as np
import pytest
import xarray as xr

import downscale as ds
from downscale.covariates import dem as terrain

UTM = "EPSG:32632"


def make_dem(values, cell_size=100.0, crs=UTM, origin=(500_000.0, 5_000_000.0), units="m"):
    values = np.asarray(values, dtype=float)
    g = ds.grid.make_grid(values.shape, cell_size, origin=origin, crs=crs)
    da = xr.DataArray(values, dims=("y", "x"), coords=g.coords, name="elevation", attrs={"units": units})
    return ds.grid.set_crs(da, crs) if crs is not None else da


def plane(gradient_east, gradient_north, shape=(30, 40), cell_size=100.0):
    g = ds.grid.make_grid(shape, cell_size, origin=(500_000.0, 5_000_000.0))
    x, y = np.meshgrid(g.x.values - 500_000.0, g.y.values - 5_000_000.0)
    return make_dem(1000.0 + gradient_east * x + gradient_north * y, cell_size)


# ------------------------------------------------------------------ slope and aspect of planes


@pytest.mark.parametrize(
    ("gradient_east", "gradient_north", "facing", "north", "east"),
    [
        (0.0, -0.2, 0.0, 1.0, 0.0),  # falls northward: faces north
        (-0.2, 0.0, 90.0, 0.0, 1.0),  # falls eastward: faces east
        (0.0, 0.2, 180.0, -1.0, 0.0),  # faces south
        (0.2, 0.0, 270.0, 0.0, -1.0),  # faces west
        (0.2, 0.2, 225.0, -np.sqrt(0.5), -np.sqrt(0.5)),  # faces south-west
    ],
)
@pytest.mark.parametrize("method", ["horn", "central"])
def test_planes_in_all_directions(gradient_east, gradient_north, facing, north, east, method):
    dem = plane(gradient_east, gradient_north)
    expected_slope = np.degrees(np.arctan(np.hypot(gradient_east, gradient_north)))
    # Exact everywhere, edges included (one-sided differences there), in float64.
    full = {"method": method, "dtype": np.float64}
    np.testing.assert_allclose(terrain.slope(dem, **full).values, expected_slope, rtol=1e-10)
    np.testing.assert_allclose(terrain.aspect(dem, **full).values, facing, atol=1e-8)
    np.testing.assert_allclose(terrain.northness(dem, **full).values, north, atol=1e-12)
    np.testing.assert_allclose(terrain.eastness(dem, **full).values, east, atol=1e-12)
    # The float32 default is the same numbers, rounded.
    default = terrain.slope(dem, method=method)
    assert default.dtype == np.float32
    np.testing.assert_array_equal(default.values, terrain.slope(dem, **full).values.astype(np.float32))


def test_south_up_grid_gives_the_same_aspect():
    dem = plane(0.0, -0.2)  # faces north
    flipped = dem.isel(y=slice(None, None, -1))
    np.testing.assert_allclose(terrain.northness(flipped).values, 1.0)
    np.testing.assert_allclose(terrain.slope(flipped).values, np.degrees(np.arctan(0.2)))


def test_flat_ground_has_zero_slope_and_no_aspect():
    dem = make_dem(np.full((10, 10), 250.0))
    assert np.all(terrain.slope(dem).values == 0)
    assert np.all(terrain.northness(dem).values == 0) and np.all(terrain.eastness(dem).values == 0)
    assert np.all(np.isnan(terrain.aspect(dem).values))


@pytest.mark.parametrize(("gradient_east", "gradient_north"), [(0.3, 0.0), (0.0, -0.3), (0.1, 0.25)])
def test_planes_on_a_latlon_grid_at_60_north(gradient_east, gradient_north):
    # A plane in metres on a 0.01-degree grid around 60 N: an east-west cell is half as wide
    # (cos 60 = 0.5) as a north-south one; ignoring that would double the eastward gradient.
    g = ds.grid.make_grid((40, 40), 0.01, origin=(10.0, 59.8), crs="EPSG:4326")
    lon, lat = np.meshgrid(g.x.values, g.y.values)
    metres_per_degree = np.deg2rad(1.0) * ds.grid.EARTH_RADIUS
    east_m = (lon - 10.0) * metres_per_degree * np.cos(np.deg2rad(lat))
    north_m = (lat - 59.8) * metres_per_degree
    dem = make_dem(
        gradient_east * east_m + gradient_north * north_m, 0.01, crs="EPSG:4326", origin=(10.0, 59.8)
    )
    assert abs(float(lat.mean()) - 60.0) < 0.01
    # dz/d(east) = gradient_east on every row; z is not exactly a plane on the sphere (cos(lat)
    # varies along a meridian), so dz/d(north) = gradient_north - gradient_east * dlon * sin(lat).
    north_gradient = gradient_north - gradient_east * np.deg2rad(lon - 10.0) * np.sin(np.deg2rad(lat))
    expected = np.degrees(np.arctan(np.hypot(gradient_east, north_gradient)))
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(terrain.slope(dem).values[inner], expected[inner], atol=1e-6)
    # Horn's smoothing of the (here varying) north gradient is one-sided at the east/west edges.
    np.testing.assert_allclose(terrain.slope(dem).values, expected, atol=1e-3)
    facing = np.degrees(np.arctan2(-gradient_east, -north_gradient)) % 360
    np.testing.assert_allclose(terrain.aspect(dem).values[inner], facing[inner], atol=1e-5)
    # Treating the degree cells as squares would get the eastward gradient wrong by 1 / cos(60) = 2.
    if gradient_east:
        naive = np.degrees(np.arctan(np.hypot(2 * gradient_east, north_gradient)))
        assert np.all(np.abs(terrain.slope(dem).values - naive) > 1.0)


def test_latlon_slope_agrees_with_xarray_spatial_geodesic():
    xrspatial = pytest.importorskip("xrspatial")
    g = ds.grid.make_grid((30, 30), 0.01, origin=(10.0, 59.85), crs="EPSG:4326")
    lon, lat = np.meshgrid(g.x.values, g.y.values)
    smooth = 300 * np.sin(lon * 10) * np.cos(lat * 12)
    dem = make_dem(smooth, 0.01, crs="EPSG:4326", origin=(10.0, 59.85))
    ours = terrain.slope(dem).values[1:-1, 1:-1]
    reference = xrspatial.slope(dem.rename(y="lat", x="lon"), method="geodesic").values[1:-1, 1:-1]
    sloped = ours > 1.0
    assert sloped.mean() > 0.8
    # A sphere here, the WGS84 ellipsoid there (radii of curvature differ by < 0.4 % at 60 N),
    # and different stencils (Horn vs a plane fitted in ECEF coordinates): 1 % agreement.
    np.testing.assert_allclose(ours[sloped], reference[sloped], rtol=0.01)


# ------------------------------------------------------------------ agreement with established libraries


@pytest.fixture(scope="module")
def rough_dem():
    scene = ds.datasets.synthetic_scene("lst", seed=3, shape=(120, 120), factor=10, cell_size=250.0)
    return scene.dem


def test_horn_slope_and_aspect_agree_with_xarray_spatial(rough_dem):
    xrspatial = pytest.importorskip("xrspatial")
    inner = (slice(1, -1), slice(1, -1))
    ours = terrain.slope(rough_dem).values[inner]
    reference = xrspatial.slope(rough_dem).values[inner].astype(float)
    # xarray-spatial computes in float32: agreement to 1e-3 degree.
    np.testing.assert_allclose(ours, reference, atol=1e-3)
    ours_aspect = terrain.aspect(rough_dem).values[inner]
    reference_aspect = xrspatial.aspect(rough_dem).values[inner].astype(float)
    sloped = ours > 0.5
    assert sloped.mean() > 0.5
    difference = (ours_aspect - reference_aspect + 180) % 360 - 180
    np.testing.assert_allclose(difference[sloped], 0.0, atol=1e-2)


def test_central_gradient_agrees_with_numpy_gradient(rough_dem):
    z = rough_dem.values
    gy, gx = np.gradient(z, 250.0)  # rows run southward on this north-up grid
    expected = np.degrees(np.arctan(np.hypot(gx, gy)))
    np.testing.assert_allclose(
        terrain.slope(rough_dem, method="central", dtype=np.float64).values, expected, rtol=1e-12, atol=1e-12
    )
    north = terrain.northness(rough_dem, method="central", dtype=np.float64).values
    magnitude = np.hypot(gx, gy)
    sloped = magnitude > 1e-9
    # dz/d(north) = -dz/d(row); northness = -dz/dnorth / |grad|.
    np.testing.assert_allclose(north[sloped], gy[sloped] / magnitude[sloped], atol=1e-12)


# ------------------------------------------------------------------ curvature


@pytest.fixture(scope="module")
def paraboloid_grid():
    g = ds.grid.make_grid((41, 41), 10.0, origin=(-205.0, -205.0), crs=UTM)
    x, y = np.meshgrid(g.x.values, g.y.values)
    return g, x, y


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_curvature_of_a_paraboloid(paraboloid_grid, sign):
    g, x, y = paraboloid_grid
    a = 2e-3
    z = sign * a * (x**2 + y**2) / 2  # bowl (sign +1) or dome (sign -1)
    dem = make_dem(z, 10.0, origin=(-205.0, -205.0))
    profile, plan = terrain.curvature(dem, dtype=np.float64)
    r = np.hypot(x, y)
    inner = np.zeros_like(r, dtype=bool)
    inner[1:-1, 1:-1] = True
    use = inner & (r > 25)
    # Second-order differences are exact on a quadratic surface.
    with np.errstate(divide="ignore"):
        expected_plan = -sign / r
    expected_profile = -sign * a / (1 + (a * r) ** 2) ** 1.5
    np.testing.assert_allclose(plan.values[use], expected_plan[use], rtol=1e-9)
    np.testing.assert_allclose(profile.values[use], expected_profile[use], rtol=1e-9)
    assert plan.attrs["units"] == "m-1"
    # The apex is flat: curvature undefined, reported as 0.
    assert plan.values[20, 20] == 0 and profile.values[20, 20] == 0


def test_curvature_of_a_plane_is_zero():
    profile, plan = terrain.curvature(plane(0.1, -0.05))
    np.testing.assert_allclose(profile.values, 0.0, atol=1e-15)
    np.testing.assert_allclose(plan.values, 0.0, atol=1e-15)


# ------------------------------------------------------------------ TPI and roughness


def test_tpi_of_a_cone():
    cell = 100.0
    g = ds.grid.make_grid((61, 61), cell, origin=(-3050.0, -3050.0), crs=UTM)
    x, y = np.meshgrid(g.x.values, g.y.values)
    k = 0.2
    dem = make_dem(2000.0 - k * np.hypot(x, y), cell, origin=(-3050.0, -3050.0))
    radius = 1000.0
    result = terrain.tpi(dem, radius, dtype=np.float64)
    assert result.name == "tpi_1km"
    # At the apex: k times the mean distance over the 21 x 21 window (computed by hand).
    offsets = np.arange(-10, 11) * cell
    mean_distance = np.hypot(*np.meshgrid(offsets, offsets)).mean()
    assert result.values[30, 30] == pytest.approx(k * mean_distance, rel=1e-12)
    # ... close to the continuous square-window value k R (sqrt(2) + asinh(1)) / 3, where the
    # window's outer edge is half a cell beyond the radius.
    outer = radius + cell / 2
    assert result.values[30, 30] == pytest.approx(k * outer * (np.sqrt(2) + np.arcsinh(1)) / 3, rel=0.01)
    # On the flank, 1.8 km from the apex, the cone is nearly a plane: a small positive TPI (its
    # convexity across the slope), again exactly k (mean distance - distance) over the window.
    flank = k * (np.hypot(*np.meshgrid(offsets + 1800.0, offsets)).mean() - 1800.0)
    assert result.values[30, 48] == pytest.approx(flank, rel=1e-9)
    assert 0 < result.values[30, 48] < 0.2 * result.values[30, 30]
    # Larger radius, larger apex TPI; a pit (inverted cone) is negative.
    assert terrain.tpi(dem, 2000.0).values[30, 30] > result.values[30, 30]
    assert terrain.tpi(-dem.assign_attrs(units="m"), radius).values[30, 30] < 0


def test_tpi_window_shrinks_at_edges_and_ignores_nan():
    z = np.zeros((7, 7))
    z[0, 0] = 8.0
    z[3, 3] = np.nan
    result = terrain.tpi(make_dem(z), 100.0).values
    assert result[0, 0] == pytest.approx(8.0 - 8.0 / 4)  # 2 x 2 window in the corner
    assert np.isnan(result[3, 3]) and np.isfinite(np.delete(result.ravel(), 3 * 7 + 3)).all()


def test_roughness():
    rng = np.random.default_rng(0)
    z = rng.normal(3000.0, 5.0, (20, 20))
    result = terrain.roughness(make_dem(z), dtype=np.float64).values
    assert result[5, 7] == pytest.approx(np.std(z[4:7, 6:9]), rel=1e-9)
    assert result[0, 0] == pytest.approx(np.std(z[0:2, 0:2]), rel=1e-9)
    assert np.all(terrain.roughness(plane(0, 0)).values == 0)


# ------------------------------------------------------------------ flow accumulation and TWI


def v_valley(shape=(60, 41), cell=100.0):
    g = ds.grid.make_grid(shape, cell, origin=(-shape[1] * cell / 2, 0.0), crs=UTM)
    x, y = np.meshgrid(g.x.values, g.y.values)
    return make_dem(0.3 * np.abs(x) + 0.05 * y + 10.0, cell, origin=(-shape[1] * cell / 2, 0.0))


def test_twi_is_higher_in_a_valley_than_on_a_ridge():
    dem = v_valley()
    wetness = terrain.twi(dem).values
    floor = wetness[5:-5, 20]
    ridges = np.concatenate([wetness[5:-5, 1], wetness[5:-5, -2]])
    assert floor.min() > ridges.max() + 2.0
    # Down the valley floor the catchment grows, so the TWI rises.
    assert np.all(np.diff(floor) > 0)
    area = terrain.flow_accumulation(dem).values
    # The bottom (south) outlet of the valley collects every interior cell draining into the floor.
    assert area[-1, 20] > 0.5 * area.size * 100.0**2 / 2


def follow(receiver, cell):
    """The cell where the flow from ``cell`` leaves the grid (a cell whose receiver is -1)."""
    steps = 0
    while receiver[cell] >= 0:
        cell = receiver[cell]
        steps += 1
        assert steps <= receiver.size, "the receivers form a cycle"
    return cell


def route(dem):
    step_north, step_east = terrain._steps_metres(dem)
    route_kernel, _ = terrain._flow_kernels()
    return route_kernel(np.ascontiguousarray(dem.values), step_east, step_north)


def test_depression_passes_its_flow_on():
    # A tilted plane with a pit: every interior cell must still drain out through the low edge.
    dem = plane(0.0, 0.1, shape=(20, 20))  # rises northward, drains south
    z = dem.values.copy()
    z[8:12, 8:12] -= 15.0
    dem = dem.copy(data=z)
    area = terrain.flow_accumulation(dem).values / 100.0**2
    receiver = route(dem)
    outlets = receiver.reshape(z.shape) < 0
    # Only edge cells drain out, and every cell reaches one: the outlets' areas add up to the grid.
    assert not outlets[1:-1, 1:-1].any()
    assert area[outlets].sum() == pytest.approx(z.size)
    # No pit cell is a sink: from the pit's bottom the flow leaves at the low (south) edge.
    assert np.all(receiver.reshape(z.shape)[8:12, 8:12] >= 0)
    assert follow(receiver, 10 * 20 + 10) // 20 == 19


def test_a_depression_spills_through_its_lowest_pass():
    # A bowl in a plateau whose rim has two notches, a deep one on the east side and a shallow
    # one on the west side: the whole bowl drains out east, through the lower pass.
    n = 21
    y, x = np.mgrid[0:n, 0:n]
    radius = np.hypot(x - 10, y - 10)
    z = np.where(radius < 8, 10.0 + 0.5 * radius, 30.0)  # bowl from 10 to 13.5 m, rim (plateau) at 30 m
    z[10, 18:] = [12.0, 11.0, 10.5]  # east notch: pass at 12 m, then down to the edge
    z[10, :3] = [10.5, 11.0, 15.0]  # west notch: pass at 15 m, above every bowl cell
    dem = make_dem(z)
    receiver = route(dem)
    bowl = np.flatnonzero((radius < 8).ravel())
    exits = {follow(receiver, cell) for cell in bowl}
    assert exits == {10 * n + 20}  # the east edge cell below the low notch
    area = terrain.flow_accumulation(dem).values / 100.0**2
    assert area[10, 20] >= bowl.size + 2  # the bowl, the notch cells and the exit cell itself


def test_flats_and_plateaus_drain_out():
    # A flat grid (every interior cell a pit) and a plateau with a NaN hole: all cells reach an outlet.
    for z in (np.full((12, 15), 100.0), np.pad(np.full((8, 8), 50.0), 3, constant_values=20.0)):
        z = z.copy()
        z[5, 6] = np.nan
        dem = make_dem(z)
        receiver = route(dem)
        valid = np.flatnonzero(np.isfinite(z.ravel()))
        area = terrain.flow_accumulation(dem).values / 100.0**2
        outlets = valid[receiver[valid] < 0]
        assert np.isnan(area[5, 6])
        assert area.ravel()[outlets].sum() == pytest.approx(valid.size)
        for cell in valid:
            follow(receiver, cell)  # no cycle


def test_steepest_descent_uses_true_distances_on_geographic_grids():
    # z falls by 1 m per cell eastward and per cell southward. With square cells the diagonal
    # (south-east) is steepest: 2 m over 1.41 cells. On a 0.01-degree grid at 60 N a cell is half
    # as wide as it is tall, so the eastern neighbour is steeper: 1 m over 0.5 vs 2 m over 1.12.
    g = ds.grid.make_grid((9, 9), 0.01, origin=(10.0, 59.95), crs="EPSG:4326")
    latlon = ds.grid.set_crs(xr.DataArray(np.zeros((9, 9)), dims=("y", "x"), coords=g.coords), "EPSG:4326")
    projected = make_dem(np.zeros((9, 9)))
    for dem, steepest in ((projected, (5, 5)), (latlon, (4, 5))):  # (rows south, column) of the receiver
        southward = np.argsort(np.argsort(-dem.y.values))  # 0 on the northern row
        z = 100.0 - np.arange(9)[None, :] - southward[:, None]
        row, col = divmod(int(route(dem.copy(data=z))[4 * 9 + 4]), 9)
        assert (southward[row], col) == steepest


def test_flow_accumulation_agrees_with_pysheds_where_there_are_no_pits(monkeypatch):
    pysheds_grid = pytest.importorskip("pysheds.grid")
    from affine import Affine
    from pysheds.view import Raster, ViewFinder

    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # pysheds 0.5 calls np.in1d (gone in NumPy 2.4)
    # A wavy dome, low at the edges, without a single pit: pysheds' D8 (steepest descent, diagonals
    # at sqrt(2)) and ours give the same directions. Edge cells differ by design (pysheds lets
    # them drain along the edge, here they drain out), so the interior is compared.
    n, cell = 60, 100.0
    y, x = np.mgrid[0:n, 0:n]
    z = 1000 - 0.02 * ((x - 29.3) ** 2 + (y - 31.7) ** 2) + np.sin(x / 4.0) * np.cos(y / 5.0)
    view = ViewFinder(affine=Affine(cell, 0, 0, 0, -cell, n * cell), shape=z.shape, nodata=np.nan)
    grid = pysheds_grid.Grid(viewfinder=view)
    directions = grid.flowdir(Raster(z.copy(), viewfinder=view), routing="d8")
    reference = np.asarray(grid.accumulation(directions, routing="d8"))
    ours = terrain.flow_accumulation(make_dem(z, cell)).values / cell**2
    assert reference[1:-1, 1:-1].max() >= 30  # flow paths 30 cells long: not a trivial comparison
    np.testing.assert_array_equal(ours[1:-1, 1:-1], reference[1:-1, 1:-1])


def test_nan_cells_stay_nan_and_neighbours_stay_finite():
    # A tilted plane with the sea (NaN) in one corner and a void in the middle.
    dem = plane(0.1, -0.2, shape=(30, 30))
    z = dem.values.copy()
    z[:10, :8] = np.nan
    z[15, 15] = np.nan
    dem = dem.copy(data=z)
    features = terrain.dem_features(dem, tpi_radii=(300.0,), solar_time="2024-06-21T10:00")
    invalid = np.isnan(z)
    for name, da in features.data_vars.items():
        assert np.all(np.isnan(da.values[invalid])), name
        assert np.all(np.isfinite(da.values[~invalid])), name
    # One-sided differences keep the plane's slope exact right next to the gaps.
    np.testing.assert_allclose(features["slope"].values[~invalid], np.degrees(np.arctan(np.hypot(0.1, 0.2))))
    np.testing.assert_allclose(features["profile_curvature"].values[~invalid], 0.0, atol=1e-15)


# ------------------------------------------------------------------ illumination


def test_solar_position_at_noon():
    # At solar noon the zenith angle is |latitude - declination|: declination ~ +23.44 at the
    # June solstice and ~0 at the March equinox.
    zenith, azimuth = terrain.solar_position("2024-06-21T12:00", 45.0, 0.0)
    assert zenith == pytest.approx(45.0 - 23.44, abs=0.3)
    assert azimuth == pytest.approx(180.0, abs=1.0)  # due south
    zenith, _ = terrain.solar_position("2024-03-20T12:00", 0.0, 0.0)
    assert zenith < 2.5  # declination +0.35 and the equation of time (-7.5 min) at that noon
    zenith, azimuth = terrain.solar_position("2024-06-21T06:00", 45.0, 0.0)  # morning: sun in the east
    assert 45.0 < azimuth < 120.0


def test_illumination_of_sun_facing_and_shaded_slopes():
    time = "2024-12-21T11:00"
    south = plane(0.0, 0.3)  # faces south
    north = plane(0.0, -0.6)  # 31 degrees, steeper than the winter sun is high (21 degrees)
    flat = plane(0.0, 0.0)
    lon, lat = terrain._grid_centre_lonlat(flat)
    zenith, _ = terrain.solar_position(time, lat, lon)
    lit_flat = terrain.solar_illumination(flat, time, dtype=np.float64).values
    np.testing.assert_allclose(lit_flat, np.cos(np.deg2rad(zenith)), rtol=1e-12)
    _, azimuth = terrain.solar_position(time, lat, lon)
    facing = np.deg2rad(azimuth - 180.0)  # angle between the sun and due south
    slope_south = np.arctan(0.3)
    expected_south = np.cos(np.deg2rad(zenith)) * np.cos(slope_south) + np.sin(np.deg2rad(zenith)) * np.sin(
        slope_south
    ) * np.cos(facing)
    np.testing.assert_allclose(
        terrain.solar_illumination(south, time, dtype=np.float64).values, expected_south, rtol=1e-12
    )
    assert expected_south > 1.5 * lit_flat.max()
    assert np.all(terrain.solar_illumination(north, time).values == 0)
    with pytest.warns(UserWarning, match="below the horizon"):
        terrain.solar_illumination(flat, "2024-12-21T23:00")


# ------------------------------------------------------------------ the feature set


def test_dem_features_default_set_and_attributes(rough_dem):
    features = terrain.dem_features(rough_dem)
    assert list(features.data_vars) == [
        "elevation",
        "slope",
        "northness",
        "eastness",
        "profile_curvature",
        "plan_curvature",
        "tpi_1km",
        "tpi_5km",
        "tpi_15km",
        "roughness",
        "twi",
    ]
    for name, da in features.data_vars.items():
        assert da.dims == ("y", "x")
        assert da.attrs["units"] and da.attrs["long_name"], name
    assert ds.grid.get_crs(features).to_epsg() == 32632
    subset = terrain.dem_features(rough_dem, features=["slope", "aspect"])
    assert list(subset.data_vars) == ["slope", "aspect"]
    np.testing.assert_array_equal(subset["slope"].values, features["slope"].values)


def test_features_are_float32_by_default_and_float64_on_request(rough_dem):
    every = list(terrain.DEM_FEATURES)  # the default set, aspect and solar
    time = "2024-06-21T10:00"
    single = terrain.dem_features(rough_dem, features=every, solar_time=time)
    double = terrain.dem_features(rough_dem, features=every, solar_time=time, dtype=np.float64)
    assert single["elevation"].dtype == np.float64  # the DEM's own array
    assert np.shares_memory(single["elevation"].values, rough_dem.values)
    for name in list(single.data_vars)[1:]:
        assert single[name].dtype == np.float32, name
        assert double[name].dtype == np.float64, name
        expected = double[name].values.astype(np.float32)
        if name in ("aspect", "solar_illumination", "twi"):  # from the float32 slope and its components
            np.testing.assert_allclose(single[name].values, expected, rtol=1e-6, atol=1e-5, err_msg=name)
        else:  # computed in float64, then rounded once
            np.testing.assert_array_equal(single[name].values, expected, err_msg=name)


def test_feature_dtype_must_be_a_float():
    with pytest.raises(
        ValueError,
        match=r"dtype must be float32 or float64 \(the dtype of the terrain "
        r"features\), got 'int16'; pass dtype=np.float64",
    ):
        terrain.dem_features(plane(0.1, 0.0), dtype="int16")


def test_unknown_feature_and_solar_without_time():
    dem = plane(0.1, 0.0)
    with pytest.raises(ValueError, match=r"Unknown DEM feature\(s\) \['slopes'\]; choose from"):
        terrain.dem_features(dem, features=["slopes"])
    with pytest.raises(ValueError, match="The 'solar' feature needs a time"):
        terrain.dem_features(dem, features=["solar"])


# ------------------------------------------------------------------ bad input


def test_dem_without_crs_is_refused():
    dem = make_dem(np.zeros((5, 5)), crs=None)
    with pytest.raises(
        ValueError, match=r"dem has no CRS, so its cell size in metres is unknown\. Declare it"
    ):
        terrain.slope(dem)


def test_dem_in_degrees_without_crs_is_refused():
    g = ds.grid.make_grid((5, 5), 0.01, crs="EPSG:4326")
    dem = xr.DataArray(np.zeros((5, 5)), dims=("y", "x"), coords={"y": g.y, "x": g.x})
    dem = dem.drop_vars("spatial_ref", errors="ignore")
    assert ds.grid.get_crs(dem) is None
    with pytest.raises(ValueError, match=r"no CRS and its x coordinate is in 'degrees_east'"):
        terrain.dem_features(dem)


def test_dem_in_a_crs_with_feet_is_refused():
    dem = make_dem(
        np.zeros((5, 5)), crs="EPSG:2263", origin=(900_000.0, 200_000.0)
    )  # NY state plane, US feet
    with pytest.raises(ValueError, match="has axis unit 'US survey foot', not metres"):
        terrain.slope(dem)


def test_elevation_in_feet_is_refused():
    with pytest.raises(ValueError, match=r"dem has units 'ft'; elevation must be in metres"):
        terrain.slope(make_dem(np.zeros((5, 5)), units="ft"))


def test_dem_with_a_time_dimension_is_refused():
    dem = make_dem(np.zeros((5, 5))).expand_dims(time=2)
    with pytest.raises(ValueError, match=r"dem must be 2-D with dims \('y', 'x'\).*isel\(time=0\)"):
        terrain.slope(dem)


def test_tpi_radius_must_be_positive_and_small_radius_warns():
    dem = plane(0.1, 0.0)
    with pytest.raises(ValueError, match="positive distance in metres"):
        terrain.tpi(dem, -5.0)
    with pytest.warns(UserWarning, match="smaller than a cell"):
        terrain.tpi(dem, 10.0)


def test_compiled_kernels_match_the_numpy_code(rough_dem, monkeypatch):
    # A DEM with sea, voids and a latitude-dependent cell width exercises every branch.
    z = rough_dem.values.copy()
    z[:20, :15] = np.nan
    z[60, 60:63] = np.nan
    dem = rough_dem.copy(data=z)
    g = ds.grid.make_grid(z.shape, 0.01, origin=(10.0, 59.0), crs="EPSG:4326")
    latlon = ds.grid.set_crs(xr.DataArray(z, dims=("y", "x"), coords=g.coords), "EPSG:4326")
    for grid in (dem, latlon):
        for method in ("horn", "central"):
            compiled = terrain.dem_features(
                grid,
                features=[
                    "slope",
                    "northness",
                    "eastness",
                    "profile_curvature",
                    "plan_curvature",
                    "tpi",
                    "roughness",
                ],
                tpi_radii=(1000.0, 3000.0),
                method=method,
            )
            monkeypatch.setattr(terrain, "USE_NUMBA", False)
            reference = terrain.dem_features(
                grid,
                features=list(compiled.data_vars)[:5] + ["tpi", "roughness"],
                tpi_radii=(1000.0, 3000.0),
                method=method,
            )
            monkeypatch.setattr(terrain, "USE_NUMBA", True)
            for name in compiled.data_vars:
                # scipy's running-sum uniform filter drifts by ~1e-4 m over long rows; the summed-area
                # tables of the kernel do not; the one-pass variance of the numpy roughness loses ~1e-4 m on flat ground.
                atol = 1e-3 if name.startswith(("tpi", "roughness")) else 1e-9
                np.testing.assert_allclose(
                    compiled[name].values,
                    reference[name].values,
                    rtol=1e-9,
                    atol=atol,
                    err_msg=f"{name} {method}",
                )


def test_routing_refuses_more_cells_than_its_indices_hold(monkeypatch):
    from downscale.covariates import _kernels

    monkeypatch.setattr(_kernels, "MAX_ROUTING_CELLS", 99)
    with pytest.raises(ValueError, match=r"at most 99 cells; this DEM has 10 x 10 = 100\. Coarsen the DEM"):
        terrain.flow_accumulation(plane(0.1, 0.0, shape=(10, 10)))


def test_basin_graph_is_the_same_in_one_chunk_or_many_and_when_it_needs_more_room(monkeypatch, rough_dem):
    """The basin graph is built in chunks (one per thread) and rebuilt with more room when a chunk's fills."""
    from downscale.covariates import _kernels

    z = rough_dem.values.copy()
    z[40:50, 60:75] = np.nan  # a lake: cells next to it drain out
    steps = np.full(z.shape[0], 250.0)
    _, receiver, label, n_basins, _ = _kernels.start_route(z, steps, 250.0)
    start, members = _kernels._members_by_basin(label, n_basins)

    def edges(graph):
        g_first, g_stop, *columns = graph
        return [np.concatenate([c[g_first[b] : g_stop[b]] for b in range(n_basins)]) for c in columns]

    expected = edges(_kernels._basin_graph(z, label, n_basins, start, members, n_chunks=1))
    assert expected[0].size > 2 * n_basins  # a real graph: every basin has neighbours
    calls = []
    chunks = _kernels._basin_graph_chunks

    def counted(*args):
        calls.append(args[-1])
        return chunks(*args)

    monkeypatch.setattr(_kernels, "_basin_graph_chunks", counted)
    for n_chunks in (2, 3):
        graph = edges(_kernels._basin_graph(z, label, n_basins, start, members, n_chunks=n_chunks))
        for ours, theirs in zip(graph, expected, strict=True):
            np.testing.assert_array_equal(ours, theirs)
    assert calls == [8, 8]  # GRAPH_ROOM sufficed
    calls.clear()
    monkeypatch.setattr(_kernels, "GRAPH_ROOM", 1)  # less than the 6 edges a basin typically has
    graph = edges(_kernels._basin_graph(z, label, n_basins, start, members, n_chunks=3))
    for ours, theirs in zip(graph, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert calls[0] == 1 and len(calls) > 1 and calls[-1] == 2 ** (len(calls) - 1)
