"""Tests for downscale.align: conservative remap onto nested blocks (same CRS and across CRS), time matching."""

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr

import downscale as ds
from downscale import align

UTM = "EPSG:32632"


def field_on(grid, values, name="field"):
    values = np.asarray(values, dtype=float)
    dims = ("time", "y", "x") if values.ndim == 3 else ("y", "x")
    coords = {"y": grid["y"], "x": grid["x"]}
    if values.ndim == 3:
        coords["time"] = pd.date_range("2020-01-01", periods=values.shape[0])
    da = xr.DataArray(values, dims=dims, coords=coords, name=name, attrs={"units": "K"})
    crs = ds.grid.get_crs(grid)
    return ds.grid.set_crs(da, crs) if crs is not None else da


# ------------------------------------------------------------------ same CRS


def test_nested_input_is_returned_unchanged_with_snapped_coordinates(rng):
    fine = ds.grid.make_grid((40, 60), 1000.0, origin=(300_000.0, 5_000_000.0), crs=UTM)
    template = ds.grid.coarse_grid(fine, 10)
    coarse = field_on(template, rng.normal(size=(4, 6)))
    jittered = coarse.assign_coords(x=coarse.x + 1e-7, y=coarse.y - 1e-7)
    out = align.to_nested(jittered, fine)
    np.testing.assert_array_equal(out.values, coarse.values)
    np.testing.assert_array_equal(out.x.values, template.x.values)
    np.testing.assert_array_equal(out.y.values, template.y.values)
    assert ds.grid.nesting_factor(out, fine) == 10
    assert out.attrs["units"] == "K"


def test_shifted_cells_average_their_two_halves():
    # 2 km source cells shifted by 1 km: every 2 km block is half of two neighbours, along x and y.
    fine = ds.grid.make_grid((6, 6), 1000.0, crs=UTM)
    source_grid = ds.grid.make_grid((4, 4), 2000.0, origin=(-1000.0, -1000.0), crs=UTM)
    values = np.arange(16.0).reshape(4, 4) ** 2
    out = align.to_nested(field_on(source_grid, values), fine)
    expected = 0.25 * (values[:-1, :-1] + values[1:, :-1] + values[:-1, 1:] + values[1:, 1:])
    np.testing.assert_allclose(out.values, expected, rtol=1e-14)
    assert ds.grid.nesting_factor(out, fine) == 2


def test_three_km_cells_onto_two_km_blocks_by_hand():
    # Along x, source edges 0,3,6 km and block edges 0,2,4,6 km: blocks take (2/2 of s0), (1 s0 + 1 s1)/2, s1.
    fine = ds.grid.make_grid((6, 6), 1000.0, crs=UTM)
    source_grid = ds.grid.make_grid((2, 2), 3000.0, crs=UTM)
    values = np.array([[1.0, 4.0], [10.0, 40.0]])  # row 0 is north (y 3..6 km)
    out = align.to_nested(field_on(source_grid, values), fine, factor=2)
    along = np.array(
        [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    )  # block x (or south->north y) weights on the source
    weights_y = along[::-1, ::-1]  # north-up: first block row is the northern one, first source row too
    expected = weights_y @ values @ along.T
    np.testing.assert_allclose(out.values, expected, rtol=1e-14)


def test_geographic_blocks_weight_rows_by_spherical_area():
    # 0.25 degree rows (0 below 60.25 N, 1 above) onto 0.3 degree blocks of a 0.1 degree grid.
    fine = ds.grid.make_grid((6, 6), 0.1, origin=(10.0, 60.1), crs="EPSG:4326")  # blocks 60.1..60.4..60.7 N
    source_grid = ds.grid.make_grid((4, 4), 0.25, origin=(9.75, 59.75), crs="EPSG:4326")
    lat_centres = source_grid.y.values
    values = np.broadcast_to((lat_centres > 60.25).astype(float)[:, None], (4, 4))
    out = align.to_nested(field_on(source_grid, values), fine, factor=3)
    # Block rows: 60.4..60.7 (all 1) and 60.1..60.4 (0 below 60.25, 1 above).
    sin = np.sin(np.deg2rad([60.1, 60.25, 60.4]))
    expected_low = (sin[2] - sin[1]) / (sin[2] - sin[0])
    assert expected_low < 0.5 - 1e-3  # the spherical weights matter at this precision
    np.testing.assert_allclose(out.values[1], expected_low, rtol=1e-12)
    np.testing.assert_allclose(out.values[0], 1.0, rtol=1e-12)


def test_same_crs_mean_over_common_area_is_preserved(rng):
    fine = ds.grid.make_grid((60, 60), 1000.0, origin=(0.0, 0.0), crs=UTM)
    # 7 km source cells offset by 3 km: they do not nest, and the source overhangs the fine grid.
    source_grid = ds.grid.make_grid((10, 10), 7000.0, origin=(-3000.0, -3000.0), crs=UTM)
    values = rng.gamma(2.0, size=(10, 10))
    out, fraction = align.to_nested(field_on(source_grid, values), fine, factor=6, return_fraction=True)
    np.testing.assert_allclose(fraction.values, 1.0, rtol=1e-12)
    # Source mean over the fine extent 0..60 km: overlap lengths of source cells with [0, 60] km.
    edges = -3000.0 + 7000.0 * np.arange(11)
    length = np.clip(np.minimum(edges[1:], 60_000.0) - np.maximum(edges[:-1], 0.0), 0, None)
    weights = np.outer(length[::-1], length)  # rows north-up
    expected = np.sum(weights * values) / np.sum(weights)
    np.testing.assert_allclose(out.values.mean(), expected, rtol=1e-12)


def test_nan_cells_are_left_out_and_thin_blocks_are_nan():
    fine = ds.grid.make_grid((4, 8), 1000.0, crs=UTM)
    source_grid = ds.grid.make_grid((2, 4), 2000.0, origin=(-1000.0, 0.0), crs=UTM)  # x edges -1,1,3,5,7 km
    values = np.array([[1.0, np.nan, 3.0, 5.0], [1.0, np.nan, 3.0, 5.0]])
    out, fraction = align.to_nested(field_on(source_grid, values), fine, factor=2, return_fraction=True)
    # Block x edges 0,2,4,6,8 km. Block 0: half of s0 (1) + half of the NaN cell -> 1, fraction 0.5.
    # Block 1: NaN half + half of s2 -> 3 (fraction 0.5). Block 3: half of s3 + nothing beyond 7 km.
    np.testing.assert_allclose(fraction.values[0], [0.5, 0.5, 1.0, 0.5], rtol=1e-14)
    np.testing.assert_allclose(out.values[0], [1.0, 3.0, 4.0, 5.0], rtol=1e-14)
    strict = align.to_nested(field_on(source_grid, values), fine, factor=2, min_coverage=0.6)
    np.testing.assert_array_equal(np.isnan(strict.values[0]), [True, True, False, True])


def test_time_and_datasets_are_kept():
    fine = ds.grid.make_grid((6, 6), 1000.0, crs=UTM)
    source_grid = ds.grid.make_grid((4, 4), 2000.0, origin=(-1000.0, -1000.0), crs=UTM)
    base = np.arange(16.0).reshape(4, 4)
    series = field_on(source_grid, np.stack([base, 2 * base, np.full((4, 4), np.nan)]))
    out = align.to_nested(series, fine)
    assert out.dims == ("time", "y", "x")
    np.testing.assert_array_equal(out.time.values, series.time.values)
    np.testing.assert_allclose(out.values[1], 2 * out.values[0], rtol=1e-14)
    assert np.isnan(out.values[2]).all()  # an all-cloud step stays NaN, it does not fail the series
    both = align.to_nested(series.to_dataset(name="a").assign(b=series * 3), fine)
    np.testing.assert_allclose(both["b"].values[:2], 3 * out.values[:2], rtol=1e-14)


# ------------------------------------------------------------------ across CRS


@pytest.fixture(scope="module")
def utm_fine():
    # 500 km x 500 km of 1 km cells in UTM 32N: 20 x 20 blocks of 25 km.
    return ds.grid.make_grid((500, 500), 1000.0, origin=(300_000.0, 4_800_000.0), crs=UTM)


@pytest.fixture(scope="module")
def lonlat_source():
    lat = np.arange(42.125, 48.5, 0.25)[::-1]  # covers the UTM square, whose NE corner is near 13 E, 47.8 N
    lon = np.arange(4.625, 13.5, 0.25)
    grid = xr.Dataset(coords={"y": lat, "x": lon})
    return ds.grid.set_crs(grid, "EPSG:4326")


def test_cross_crs_constant_field_is_exact_and_fully_covered(utm_fine, lonlat_source):
    shape = (lonlat_source.sizes["y"], lonlat_source.sizes["x"])
    out, fraction = align.to_nested(
        field_on(lonlat_source, np.full(shape, 7.5)), utm_fine, factor=25, return_fraction=True
    )
    assert out.shape == (20, 20)
    assert ds.grid.get_crs(out).to_epsg() == 32632
    np.testing.assert_allclose(out.values, 7.5, rtol=1e-13)
    np.testing.assert_allclose(fraction.values, 1.0, rtol=1e-9)  # the outlines tile: no gaps, no overlaps


def test_cross_crs_default_factor_matches_the_source_cell_size(utm_fine, lonlat_source):
    # 0.25 degree at 45 N is about 27.8 km x 19.7 km (23.4 km as a square): of the divisors of 500, 25.
    shape = (lonlat_source.sizes["y"], lonlat_source.sizes["x"])
    out = align.to_nested(field_on(lonlat_source, np.ones(shape)), utm_fine)
    assert ds.grid.nesting_factor(out, utm_fine) == 25


def test_cross_crs_mean_and_blocks_match_a_geopandas_overlay(utm_fine, lonlat_source, rng):
    import geopandas as gpd
    import shapely

    shape = (lonlat_source.sizes["y"], lonlat_source.sizes["x"])
    values = rng.gamma(2.0, size=shape)
    values[5:8, 10:14] = np.nan  # a cloud: left out, not poisoning its neighbours
    source = field_on(lonlat_source, values)
    out, fraction = align.to_nested(source, utm_fine, factor=25, min_coverage=0.0, return_fraction=True)

    # Reference: the same densified outlines, intersected by geopandas with the blocks.
    polygons = align.cell_polygons(source, pyproj.CRS(UTM))
    cells = gpd.GeoDataFrame({"value": values.ravel()}, geometry=list(polygons), crs=UTM)
    cells = cells[np.isfinite(cells["value"])]
    blocks = ds.grid.coarse_grid(utm_fine, 25)
    xs, ys = np.meshgrid(blocks.x.values, blocks.y.values)
    boxes = shapely.box(xs.ravel() - 12_500, ys.ravel() - 12_500, xs.ravel() + 12_500, ys.ravel() + 12_500)
    targets = gpd.GeoDataFrame({"block": np.arange(boxes.size)}, geometry=list(boxes), crs=UTM)
    pieces = gpd.overlay(cells, targets, how="intersection", keep_geom_type=True)
    pieces["area"] = pieces.area
    pieces["weighted"] = pieces["area"] * pieces["value"]
    per_block = pieces.groupby("block")[["weighted", "area"]].sum()
    reference = np.full(boxes.size, np.nan)
    reference[per_block.index] = per_block["weighted"] / per_block["area"]
    np.testing.assert_allclose(out.values.ravel(), reference, rtol=1e-9)

    # The covered-area-weighted mean equals the source's area-weighted mean over the common area.
    covered = fraction.values * 25_000.0**2
    ok = np.isfinite(out.values)
    remapped_mean = np.sum(covered[ok] * out.values[ok]) / np.sum(covered[ok])
    # Source side, without the blocks: the cells clipped to the fine grid's extent as one rectangle.
    extent = gpd.GeoDataFrame(geometry=[shapely.box(300_000, 4_800_000, 800_000, 5_300_000)], crs=UTM)
    clipped = gpd.overlay(cells, extent, how="intersection", keep_geom_type=True)
    source_mean = np.sum(clipped.area * clipped["value"]) / np.sum(clipped.area)
    assert abs(remapped_mean / source_mean - 1) < 1e-9
    assert fraction.values.min() < 0.9  # the cloud really thinned some blocks


def test_cross_crs_linear_field_is_reproduced(utm_fine, lonlat_source):
    lon, lat = np.meshgrid(lonlat_source.x.values, lonlat_source.y.values)
    source = field_on(lonlat_source, 2.0 * lon + 3.0 * lat)
    out = align.to_nested(source, utm_fine, factor=25)
    # Analytic block means: the linear field at every 1 km cell centre, averaged per block.
    transformer = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    x, y = np.meshgrid(utm_fine.x.values, utm_fine.y.values)
    fine_lon, fine_lat = transformer.transform(x, y)
    truth = (2.0 * fine_lon + 3.0 * fine_lat).reshape(20, 25, 20, 25).mean(axis=(1, 3))
    # A piecewise-constant 0.25 degree source changes by up to 0.5 (x) and 0.75 (y) between cells;
    # the conservative blocks are much closer than that to the analytic means.
    error = np.abs(out.values - truth)
    assert error.max() < 0.1
    assert error.mean() < 0.03


def test_cross_crs_agrees_with_the_separable_path_when_the_transform_is_linear(rng):
    # The same UTM plane in kilometres: a different CRS, and cells stay axis-aligned rectangles.
    in_km = "+proj=utm +zone=32 +datum=WGS84 +units=km +no_defs"
    assert not pyproj.CRS(in_km).equals(pyproj.CRS(UTM))
    fine = ds.grid.make_grid((60, 60), 1000.0, origin=(400_000.0, 5_000_000.0), crs=UTM)
    source_grid = ds.grid.make_grid((10, 10), 7000.0, origin=(397_000.0, 4_997_000.0), crs=UTM)
    values = rng.normal(size=(10, 10))
    values[3, 4] = np.nan
    separable = align.to_nested(field_on(source_grid, values), fine, factor=6)
    km_grid = ds.grid.make_grid((10, 10), 7.0, origin=(397.0, 4_997.0), crs=in_km)
    polygon = align.to_nested(field_on(km_grid, values), fine, factor=6)
    np.testing.assert_allclose(polygon.values, separable.values, rtol=1e-8)


def test_projected_source_onto_a_geographic_fine_grid(lonlat_source):
    # The reverse direction: a UTM field onto blocks of a 0.05 degree grid; a constant stays constant.
    fine = ds.grid.make_grid((20, 20), 0.05, origin=(8.0, 45.0), crs="EPSG:4326")
    source_grid = ds.grid.make_grid((15, 15), 10_000.0, origin=(350_000.0, 4_950_000.0), crs=UTM)
    out, fraction = align.to_nested(
        field_on(source_grid, np.full((15, 15), 3.0)), fine, factor=5, return_fraction=True
    )
    np.testing.assert_allclose(out.values, 3.0, rtol=1e-13)
    np.testing.assert_allclose(fraction.values, 1.0, rtol=1e-6)


# ------------------------------------------------------------------ bad input


def test_bad_input_errors_are_pinned():
    fine = ds.grid.make_grid((6, 6), 1000.0, crs=UTM)
    source_grid = ds.grid.make_grid((4, 4), 2000.0, origin=(-1000.0, -1000.0), crs=UTM)
    good = field_on(source_grid, np.ones((4, 4)))

    with pytest.raises(ValueError, match=r"The coarse grid has no CRS while the fine grid is in EPSG:32632"):
        align.to_nested(good.drop_vars("spatial_ref").assign_attrs(grid_mapping=None), fine)
    in_degrees = ds.grid.set_crs(good.drop_vars("spatial_ref"), "EPSG:4326")
    with pytest.raises(ValueError, match=r"declared in the geographic CRS EPSG:4326, but its coordinates"):
        align.to_nested(in_degrees, fine)
    with pytest.raises(ValueError, match=r"'field' is NaN everywhere; there is nothing to remap"):
        align.to_nested(good * np.nan, fine)
    with pytest.raises(
        ValueError, match=r"coarse must have spatial dimensions \('y', 'x'\); it has \('lat', 'lon'\)"
    ):
        align.to_nested(good.rename(y="lat", x="lon"), fine)
    with pytest.raises(ValueError, match=r"coarse has no 'y' coordinate"):
        align.to_nested(xr.DataArray(np.ones((4, 4)), dims=("y", "x")), fine)
    far = good.assign_coords(x=good.x + 1e6)
    with pytest.raises(
        ValueError, match=r"does not overlap the fine grid: coarse extent x 999000\.\.1\.007e\+06"
    ):
        align.to_nested(far, fine, factor=2)
    with pytest.raises(ValueError, match=r"min_coverage must be between 0 and 1, got 2"):
        align.to_nested(good, fine, min_coverage=2)
    with pytest.raises(ValueError, match=r"not a multiple of the factor 4"):
        align.to_nested(good, fine, factor=4)


# ------------------------------------------------------------------ time matching


def series(times, values=None):
    times = pd.to_datetime(times, format="ISO8601") if not isinstance(times, pd.DatetimeIndex) else times
    values = np.arange(len(times), dtype=float) if values is None else np.asarray(values, dtype=float)
    return xr.DataArray(values, dims="time", coords={"time": times})


def test_match_times_nearest_within_tolerance():
    a = series(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-10"], [1, 2, 3, 4])
    b = series(["2020-01-03T05:00", "2020-01-01T10:00", "2020-01-02T13:00"], [30, 10, 20])  # unsorted
    a_m, b_m = align.match_times(a, b, tolerance="12h")
    np.testing.assert_array_equal(a_m.time.values, pd.to_datetime(["2020-01-01", "2020-01-03"]))
    np.testing.assert_array_equal(b_m.time.values, a_m.time.values)
    np.testing.assert_array_equal(a_m.values, [1, 3])
    np.testing.assert_array_equal(b_m.values, [10, 30])
    wide_a, wide_b = align.match_times(a, b, tolerance="1D")
    np.testing.assert_array_equal(wide_b.values, [10, 20, 30])


def test_match_times_uses_each_step_once():
    # Hourly a against one daily b: only the closest hour takes it.
    a = series(pd.date_range("2020-01-01", periods=24, freq="h"))
    b = series(["2020-01-01T09:20"], [5.0])
    a_m, b_m = align.match_times(a, b, tolerance="12h")
    np.testing.assert_array_equal(a_m.time.values, pd.to_datetime(["2020-01-01T09:00"]))
    np.testing.assert_array_equal(b_m.values, [5.0])


def test_match_times_daily_means():
    a = series(pd.date_range("2020-01-01", periods=72, freq="h"))  # values 0..71
    b = series(["2020-01-02T10:30", "2020-01-03T00:00", "2020-01-03T12:00", "2020-01-07"], [4, 1, 3, 9])
    a_m, b_m = align.match_times(a, b, how="daily")
    np.testing.assert_array_equal(a_m.time.values, pd.to_datetime(["2020-01-02", "2020-01-03"]))
    np.testing.assert_allclose(a_m.values, [np.mean(np.arange(24, 48)), np.mean(np.arange(48, 72))])
    np.testing.assert_allclose(b_m.values, [4.0, 2.0])


def test_match_times_on_grids_keeps_space():
    grid = ds.grid.make_grid((3, 3), 1000.0, crs=UTM)
    values = np.stack([np.full((3, 3), k) for k in range(3)])
    a = field_on(grid, values)
    b = a.assign_coords(time=a.time + pd.Timedelta("2h")) * 10
    a_m, b_m = align.match_times(a, b)
    assert a_m.dims == b_m.dims == ("time", "y", "x")
    np.testing.assert_array_equal(b_m.values, 10 * a_m.values)


def test_match_times_errors_are_pinned():
    a = series(["2020-01-01", "2020-01-02", "2020-01-03"])
    b = series(["2021-06-01", "2021-06-02"])
    with pytest.raises(
        ValueError,
        match=r"No time step of a \(2020-01-01 00:00:00 \.\. 2020-01-03 00:00:00, 3 step\(s\)\) is within "
        r"0 days 12:00:00 of a time step of b \(2021-06-01 00:00:00 \.\. 2021-06-02 00:00:00, 2 step\(s\)\)\. "
        r"Widen tolerance=",
    ):
        align.match_times(a, b)
    with pytest.raises(ValueError, match=r"No day is shared by a \(2020-01-01 .*\) and b \(2021-06-01"):
        align.match_times(a, b, how="daily")
    with pytest.raises(ValueError, match=r"b has no 'time' dimension \(it has \('t',\)\)"):
        align.match_times(a, xr.DataArray([1.0], dims="t"))
    with pytest.raises(ValueError, match=r"a has repeated time steps \(2020-01-01 00:00:00"):
        align.match_times(series(["2020-01-01", "2020-01-01"]), b)
    with pytest.raises(ValueError, match=r"how must be 'nearest' or 'daily', got 'mean'"):
        align.match_times(a, b, how="mean")
    with pytest.raises(ValueError, match=r"tolerance must be a time span such as '12h'"):
        align.match_times(a, b, tolerance="soon")
    with pytest.raises(ValueError, match=r"a's 'time' coordinate holds int64 values, not dates"):
        align.match_times(xr.DataArray([1.0, 2.0], dims="time", coords={"time": [1, 2]}), b)


# ------------------------------------------------------------------ station tables


def stations_table(geo=True):
    import geopandas as gpd

    table = pd.DataFrame(
        {
            "station_id": ["A", "A", "B", "B", "A"],
            "time": pd.to_datetime(
                [
                    "2020-01-01T03:00",
                    "2020-01-02T01:00",
                    "2020-01-02T02:00",
                    "2020-01-03T10:00",
                    "2020-01-01T20:00",
                ]
            ),
            "value": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    if not geo:
        return table.assign(lon=[7.0, 7.0, 8.0, 8.0, 7.0], lat=[45.0, 45.0, 46.0, 46.0, 45.0])
    return gpd.GeoDataFrame(table, geometry=gpd.points_from_xy([0, 0, 1, 1, 0], [0, 0, 1, 1, 0]), crs=UTM)


def test_match_times_station_table_nearest():
    import geopandas as gpd

    a = series(["2020-01-01", "2020-01-02", "2020-01-05"], [1, 2, 3])
    a_m, b_m = align.match_times(a, stations_table(), tolerance="6h")
    # Rows 0 (3 h from Jan 1), 1 and 2 (1-2 h from Jan 2) and 4 (4 h before Jan 2) match; row 3 is 34 h off.
    assert isinstance(b_m, gpd.GeoDataFrame) and b_m.crs.to_epsg() == 32632
    assert b_m.index.tolist() == [0, 1, 2, 4]
    np.testing.assert_array_equal(
        b_m["matched_time"].to_numpy(),
        pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-02", "2020-01-02"]),
    )
    np.testing.assert_array_equal(a_m.time.values, pd.to_datetime(["2020-01-01", "2020-01-02"]))
    np.testing.assert_array_equal(a_m.values, [1, 2])
    wide_a, wide_b = align.match_times(a, stations_table(), tolerance="2D")
    assert len(wide_b) == 5 and wide_b["matched_time"].iloc[3] == pd.Timestamp("2020-01-02")
    assert wide_a.sizes["time"] == 2  # several records share a step: stations are many per time


def test_match_times_station_table_daily_means_per_station():
    a = series(pd.date_range("2020-01-01", periods=72, freq="h"))  # values 0..71
    for table in (stations_table(), stations_table(geo=False)):
        a_m, b_m = align.match_times(a, table, how="daily")
        np.testing.assert_allclose(a_m.values, [11.5, 35.5, 59.5])
        np.testing.assert_array_equal(b_m["station_id"], ["A", "A", "B", "B"])
        np.testing.assert_allclose(b_m["value"], [3.0, 2.0, 3.0, 4.0])  # station A on Jan 1: mean of 1 and 5
        np.testing.assert_array_equal(b_m["n_records"], [2, 1, 1, 1])
        np.testing.assert_array_equal(b_m["matched_time"], b_m["time"])
    np.testing.assert_allclose(b_m["lon"], [7.0, 7.0, 8.0, 8.0])  # coordinates identify, not averaged
    geo = align.match_times(a, stations_table(), how="daily")[1]
    assert geo.geometry.x.tolist() == [0.0, 0.0, 1.0, 1.0] and geo.crs.to_epsg() == 32632


def test_match_times_station_table_errors_are_pinned():
    a = series(["2021-06-01", "2021-06-02"])
    table = stations_table()
    with pytest.raises(
        ValueError,
        match=r"No record of b \(2020-01-01 03:00:00 \.\. 2020-01-03 10:00:00, 5 step\(s\)\) is within 0 days "
        r"12:00:00 of a time step of a \(2021-06-01 00:00:00 \.\. 2021-06-02 00:00:00, 2 step\(s\)\)\. "
        r"Widen tolerance=, or use how='daily'",
    ):
        align.match_times(a, table)
    with pytest.raises(
        ValueError, match=r"No day is shared by a \(2021-06-01 .*\) and the records of b \(2020-01-01"
    ):
        align.match_times(a, table, how="daily")
    with pytest.raises(
        ValueError, match=r"b is a table without a 'time' column \(its columns are \['station_id', 'date'"
    ):
        align.match_times(a, pd.DataFrame(table.drop(columns="geometry")).rename(columns={"time": "date"}))
    with pytest.raises(
        ValueError, match=r"b's 'time' column holds values that are not dates \(e\.g\. 'soon'\)"
    ):
        align.match_times(a, pd.DataFrame({"time": ["soon"], "value": [1.0]}))


def test_cross_crs_field_linear_in_the_fine_plane_is_reproduced_at_block_centres(utm_fine, lonlat_source):
    # Source values: a plane in UTM metres (2 and 3 per km along x and y), sampled at the cell centres.
    lon, lat = np.meshgrid(lonlat_source.x.values, lonlat_source.y.values)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(lon, lat)
    plane = lambda x, y: 2e-3 * (x - 550_000.0) + 3e-3 * (y - 5_050_000.0)  # noqa: E731
    out = align.to_nested(field_on(lonlat_source, plane(x, y)), utm_fine, factor=25)
    block_x, block_y = np.meshgrid(out.x.values, out.y.values)
    error = out.values - plane(block_x, block_y)
    # Neighbouring source cells differ by ~40 (x, 19.7 km) and ~83 (y, 27.8 km); blocks span 2375.
    # Piecewise-constant cells cut by block edges give errors well below one cell jump, with no bias.
    assert np.abs(error).max() < 10.0
    assert abs(error.mean()) < 0.1


def test_crs_and_overlap_errors_name_the_fix():
    fine = ds.grid.make_grid((50, 50), 1000.0, origin=(300_000.0, 4_800_000.0), crs=UTM)
    degrees = ds.grid.make_grid((8, 8), 0.25, origin=(20.0, 10.0))  # no CRS, lon/lat-looking coordinates
    field = xr.DataArray(np.ones((8, 8)), dims=("y", "x"), coords=degrees.coords)
    with pytest.raises(
        ValueError,
        match=r"The coarse grid has no CRS while the fine grid is in EPSG:32632, so they cannot be matched\. "
        r"Declare it, e\.g\. `downscale\.grid\.set_crs\(coarse, 'EPSG:4326'\)` if its coordinates are lon/lat",
    ):
        align.to_nested(field, fine)
    with pytest.raises(
        ValueError,
        match=r"The fine grid has no CRS while the coarse grid is in EPSG:32632.*"
        r"`downscale\.grid\.set_crs\(fine, 'EPSG:32632'\)` if it is the same",
    ):
        align.to_nested(field_on(fine, np.ones((50, 50))), ds.grid.make_grid((50, 50), 100.0), factor=10)
    # Across CRS, the coarse extent is also given in the fine CRS (the Alps grid vs a field over Africa).
    far = ds.grid.set_crs(field, "EPSG:4326")
    for data in (far, far.expand_dims(time=pd.date_range("2020-01-01", periods=2))):
        with pytest.raises(
            ValueError,
            match=r"does not overlap the fine grid: coarse extent x 20\.\.22, y 10\.\.12 \(EPSG:4326; "
            r"x 1\.70\d*e\+06\.\.1\.93\d*e\+06, y 1\.12\d*e\+06\.\.1\.36\d*e\+06 in EPSG:32632\), "
            r"fine extent x 300000\.\.350000, y 4\.8e\+06\.\.4\.85e\+06 \(EPSG:32632\)",
        ):
            align.to_nested(data, fine, factor=25)


def test_longitude_conventions_give_the_same_blocks(rng):
    # A global 0..360 field (ERA5-style) and the same field in -180..180, onto grids straddling Greenwich.
    lat = np.arange(48.125, 54.0, 0.25)[::-1]
    lon_east = np.arange(0.125, 360.0, 0.25)
    values = rng.normal(size=(lat.size, lon_east.size))
    east = ds.grid.set_crs(
        xr.DataArray(values, dims=("y", "x"), coords={"y": lat, "x": lon_east}), "EPSG:4326"
    )
    centred = east.assign_coords(x=((east.x + 180.0) % 360.0) - 180.0).sortby("x")
    assert centred.x.values[0] == -179.875
    utm30 = ds.grid.make_grid((100, 100), 1000.0, origin=(650_000.0, 5_600_000.0), crs="EPSG:32630")
    lonlat = ds.grid.make_grid((40, 40), 0.05, origin=(-1.0, 50.0), crs="EPSG:4326")
    for fine, factor in ((utm30, 25), (lonlat, 5)):
        reference = align.to_nested(centred, fine, factor=factor)
        assert np.isfinite(reference.values).all()
        np.testing.assert_array_equal(align.to_nested(east, fine, factor=factor).values, reference.values)
    # A regional field west of Greenwich given as 300..360 is shifted by -360 degrees (fine grid near 4 W).
    west = east.sel(x=slice(300.0, 360.0))
    west_grid = ds.grid.make_grid((50, 50), 1000.0, origin=(400_000.0, 5_600_000.0), crs="EPSG:32630")
    reference = align.to_nested(centred, west_grid, factor=25)
    assert np.isfinite(reference.values).all()
    np.testing.assert_array_equal(align.to_nested(west, west_grid, factor=25).values, reference.values)


def test_match_times_station_table_with_text_times_in_mixed_iso_precision():
    a = series(["2020-01-01", "2020-01-03"], [1, 2])
    records = pd.DataFrame(
        {"time": ["2020-01-01T02:00", "2020-01-03", "2020-01-05"], "value": [1.0, 2.0, 3.0]}
    )
    a_m, b_m = align.match_times(a, records)
    assert b_m.index.tolist() == [0, 1]
    np.testing.assert_array_equal(
        b_m["matched_time"].to_numpy(), pd.to_datetime(["2020-01-01", "2020-01-03"])
    )
