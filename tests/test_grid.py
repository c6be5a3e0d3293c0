"""Tests for downscale.grid against analytic truth."""

import numpy as np
import pytest
import xarray as xr

import downscale as ds
from downscale import grid


def field_on(g, values, name="v"):
    return xr.DataArray(values, dims=("y", "x"), coords=g.coords, name=name)


def test_block_mean_of_linear_field_is_value_at_block_centre():
    g = grid.make_grid((20, 30), 1000.0, crs="EPSG:32632")
    field = 2.0 * g.x + 3.0 * g.y + 0 * g.x * g.y
    mean = grid.block_mean(field.transpose("y", "x"), 5)
    coarse = grid.coarse_grid(g, 5)
    expected = 2.0 * coarse.x + 3.0 * coarse.y
    np.testing.assert_allclose(mean.values, expected.transpose("y", "x").values, rtol=1e-12)
    assert grid.get_crs(mean).to_epsg() == 32632


def test_block_mean_nan_aware_with_fraction_and_threshold():
    g = grid.make_grid((2, 4), 1.0)
    values = np.array([[1.0, 2.0, np.nan, np.nan], [3.0, np.nan, np.nan, 8.0]])
    mean, fraction = grid.block_mean(field_on(g, values), 2, return_fraction=True)
    np.testing.assert_allclose(mean.values, [[2.0, np.nan]])
    np.testing.assert_allclose(fraction.values, [[0.75, 0.25]])
    np.testing.assert_allclose(grid.block_mean(field_on(g, values), 2, min_valid=0.2).values, [[2.0, 8.0]])


def test_block_mean_keeps_time_and_datasets():
    g = grid.make_grid((4, 4), 1.0)
    data = np.arange(2 * 16, dtype=float).reshape(2, 4, 4)
    da = xr.DataArray(data, dims=("time", "y", "x"), coords={"time": [0, 1], "y": g.y, "x": g.x}, name="a")
    mean = grid.block_mean(da, 2)
    assert mean.dims == ("time", "y", "x") and mean.shape == (2, 2, 2)
    np.testing.assert_allclose(mean.values[1, 0, 0], np.mean(data[1, :2, :2]))
    dataset = grid.block_mean(xr.Dataset({"a": da, "b": da * 2}), 2)
    np.testing.assert_allclose(dataset["b"].values, 2 * mean.values)


@pytest.fixture(params=[True, False], ids=["numba", "numpy"])
def use_numba(request, monkeypatch):
    """Run a test with the compiled block mean and with its numpy reference."""
    monkeypatch.setattr(grid, "USE_NUMBA", request.param)
    return request.param


def test_block_mean_array_by_hand_with_row_weights_nan_and_min_valid(use_numba):
    # Two time steps of a 4 x 4 grid in 2 x 2 blocks; rows weigh 1, 3, 1, 1.
    values = np.array(
        [
            [
                [1.0, 2.0, 5.0, 5.0],
                [3.0, np.nan, 5.0, 5.0],
                [np.nan, np.nan, 2.0, 4.0],
                [np.nan, 8.0, 6.0, 8.0],
            ],
            [
                [0.0, 0.0, np.nan, np.nan],
                [4.0, 4.0, np.nan, np.nan],
                [1.0, 1.0, 1.0, 1.0],
                [1.0, 1.0, 1.0, 1.0],
            ],
        ]
    )
    weights = np.array([1.0, 3.0, 1.0, 1.0])
    mean, fraction = grid._block_mean_array(values, weights, 2, min_valid=0.3)
    # Top-left block of step 0: (1 + 2) * 1 + 3 * 3 over weights 2 * 1 + 1 * 3 of 2 * (1 + 3);
    # of step 1: (0 + 0) * 1 + (4 + 4) * 3 over 2 * 1 + 2 * 3.
    expected_mean = [[[12.0 / 5.0, 5.0], [8.0, 5.0]], [[24.0 / 8.0, np.nan], [1.0, 1.0]]]
    expected_fraction = [[[5.0 / 8.0, 1.0], [0.25, 1.0]], [[1.0, 0.0], [1.0, 1.0]]]
    # The lower-left block of step 0 keeps a quarter of its weight: below min_valid 0.3.
    expected_mean[0][1][0] = np.nan
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-15)
    np.testing.assert_allclose(fraction, expected_fraction, rtol=1e-15)
    mean, _ = grid._block_mean_array(values, weights, 2, min_valid=1e-9)
    assert mean[0, 1, 0] == 8.0


@pytest.mark.parametrize("factor", [1, 3, 5, 9, 25, 130])
def test_compiled_block_mean_matches_the_numpy_reference(factor):
    rng = np.random.default_rng(factor)
    values = rng.normal(300.0, 50.0, size=(2, 3, 2 * factor, 3 * factor))  # leading (time, variable) dims
    values[rng.uniform(size=values.shape) < 0.4] = np.nan
    values[0, 0, :factor, :factor] = np.nan  # an all-NaN block
    g = grid.make_grid((2 * factor, 3 * factor), 0.01, origin=(10.0, 59.0), crs="EPSG:4326")
    weights = grid.block_sum_weights(g, factor)  # geographic: every row weighs differently
    assert np.ptp(weights) > 0 or factor == 1
    for min_valid in (1e-9, 0.5, 0.75):
        expected = grid._block_mean_numpy(values, weights, factor, min_valid)
        got = grid._block_mean_array(values, weights, factor, min_valid)
        for e, o in zip(expected, got, strict=True):
            assert o.shape == e.shape == (2, 3, 2, 3)
            np.testing.assert_array_equal(np.isnan(o), np.isnan(e))
            np.testing.assert_allclose(o, e, rtol=1e-12, atol=0)
        assert np.isnan(got[0][0, 0, 0, 0]) and got[1][0, 0, 0, 0] == 0.0
    float32 = grid._block_mean_array(values.astype(np.float32), weights, factor, 0.5)
    reference = grid._block_mean_numpy(values.astype(np.float32), weights, factor, 0.5)
    np.testing.assert_allclose(float32[0], reference[0], rtol=1e-12)


def test_bilinear_window_equals_the_whole_grid_result():
    rng = np.random.default_rng(1)
    coarse = rng.normal(size=(5, 6))
    coarse[2, 3] = np.nan
    whole = grid._bilinear(coarse, 4)
    rows, columns = slice(8, 12), np.array([0, 5, 13, 23])
    np.testing.assert_array_equal(grid._bilinear(coarse, 4, rows, columns), whole[rows][:, columns])


def test_exact_spherical_cell_area():
    g = grid.make_grid((180, 360), 1.0, origin=(-180.0, -90.0), crs="EPSG:4326")
    area = grid.cell_area(g)
    np.testing.assert_allclose(area.sum(), 4 * np.pi * grid.EARTH_RADIUS**2, rtol=1e-12)
    # A 1 x 1 degree cell between 60 and 61 N, by the closed form R^2 dlon (sin(61) - sin(60)).
    row = int(np.argmin(abs(g.y.values - 60.5)))
    expected = grid.EARTH_RADIUS**2 * np.deg2rad(1) * (np.sin(np.deg2rad(61)) - np.sin(np.deg2rad(60)))
    np.testing.assert_allclose(area.values[row, 0], expected, rtol=1e-12)


def test_geographic_block_mean_is_area_weighted():
    g = grid.make_grid((2, 2), 30.0, origin=(0.0, 0.0), crs="EPSG:4326")  # rows 0-30 N and 30-60 N
    values = np.array([[1.0, 1.0], [0.0, 0.0]])  # the northern row (listed first) is 1
    mean = grid.block_mean(field_on(g, values), 2)
    north = np.sin(np.deg2rad(60)) - np.sin(np.deg2rad(30))
    south = np.sin(np.deg2rad(30))
    np.testing.assert_allclose(mean.values[0, 0], north / (north + south), rtol=1e-12)


def test_nesting_factor_and_errors():
    coarse = grid.make_grid((4, 4), 25_000.0, crs="EPSG:32632")
    fine = grid.fine_grid(coarse, 25)
    assert grid.nesting_factor(coarse, fine) == 25
    assert grid.nesting_factor(grid.coarse_grid(fine, 5), fine) == 5
    wrong_size = grid.make_grid((4, 4), 24_500.0, crs="EPSG:32632")
    with pytest.raises(ValueError, match=r"do not nest along 'y'.*24.5 times the fine cell size 1000"):
        grid.nesting_factor(wrong_size, fine)
    shifted = coarse.assign_coords(x=coarse.x + 500.0)
    with pytest.raises(
        ValueError, match=r"do not nest along 'x': the coarse cell edges are shifted by 0.5 fine"
    ):
        grid.nesting_factor(shifted, fine)
    other_crs = grid.set_crs(coarse, "EPSG:3035")
    with pytest.raises(ValueError, match=r"different CRS \(EPSG:3035 vs EPSG:32632\).*to_nested"):
        grid.nesting_factor(other_crs, fine)
    cropped = fine.isel(x=slice(0, 90))
    with pytest.raises(
        ValueError, match=r"4 coarse cells x factor 25 = 100 fine cells, but the fine grid has 90"
    ):
        grid.nesting_factor(coarse, cropped)


def test_check_grid_errors():
    with pytest.raises(
        ValueError, match=r"must have spatial dimensions \('y', 'x'\); it has \('lat', 'lon'\)"
    ):
        grid.check_grid(xr.DataArray(np.zeros((2, 2)), dims=("lat", "lon")))
    with pytest.raises(ValueError, match="has no 'x' coordinate"):
        grid.check_grid(xr.DataArray(np.zeros((2, 2)), dims=("y", "x"), coords={"y": [0, 1]}))
    with pytest.raises(ValueError, match=r"not regular: steps vary by 33.3% of the mean step 1.5"):
        grid.check_grid(xr.DataArray(np.zeros((2, 3)), dims=("y", "x"), coords={"y": [0, 1], "x": [0, 1, 3]}))
    with pytest.raises(ValueError, match="not sorted"):
        grid.check_grid(xr.DataArray(np.zeros((2, 3)), dims=("y", "x"), coords={"y": [0, 1], "x": [0, 2, 1]}))
    with pytest.raises(ValueError, match=r"e.g. `data.sortby\('x'\)`"):
        grid.check_grid(xr.DataArray(np.zeros((2, 3)), dims=("y", "x"), coords={"y": [0, 1], "x": [0, 2, 1]}))
    with pytest.raises(ValueError, match="has no CRS"):
        grid.check_grid(grid.make_grid((2, 2), 1.0), require_crs=True)
    with pytest.raises(ValueError, match=r"last two dimensions"):
        grid.check_grid(
            xr.DataArray(np.zeros((2, 2, 2)), dims=("y", "x", "time"), coords={"y": [0, 1], "x": [0, 1]})
        )


def test_jittered_float32_coordinates_count_as_regular():
    x = (np.arange(50) * 1000.0 + 500.0).astype(np.float32) + np.random.default_rng(0).uniform(-2, 2, 50)
    assert grid.grid_step(x) == pytest.approx(1000.0, rel=1e-3)


def test_all_nan_field_is_refused():
    g = grid.make_grid((4, 4), 1.0)
    with pytest.raises(ValueError, match="NaN everywhere"):
        grid.block_mean(field_on(g, np.full((4, 4), np.nan), name="lst"), 2)


def test_fine_and_coarse_grid_round_trip():
    coarse = grid.make_grid((3, 5), 10.0, origin=(100.0, 200.0), crs="EPSG:32632")
    fine = grid.fine_grid(coarse, 10)
    np.testing.assert_allclose(grid.coarse_grid(fine, 10).x, coarse.x)
    np.testing.assert_allclose(grid.coarse_grid(fine, 10).y, coarse.y)
    assert fine.sizes == {"y": 30, "x": 50}
    assert float(fine.x[0]) == pytest.approx(100.5)


def test_upsample_nearest_is_coherent_and_bilinear_reproduces_linear_fields():
    coarse_g = grid.make_grid((6, 6), 4.0)
    linear = (coarse_g.x * 0.5 - coarse_g.y * 2.0).transpose("y", "x")
    up = grid.upsample(linear, 4)
    np.testing.assert_allclose(grid.block_mean(up, 4).values, linear.values)
    bilinear = grid.upsample(linear, 4, "bilinear")
    inner = bilinear.isel(y=slice(2, -2), x=slice(2, -2))
    np.testing.assert_allclose(
        inner.values, (inner.x * 0.5 - inner.y * 2.0).transpose("y", "x").values, atol=1e-12
    )


def test_pixel_table_round_trip_with_time_and_mask():
    g = grid.make_grid((3, 4), 1.0, crs="EPSG:32632")
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4))
    a[0, 1, 1] = np.nan
    data = xr.Dataset(
        {
            "a": (("time", "y", "x"), a),
            "b": (("y", "x"), rng.normal(size=(3, 4))),
        },
        coords={"time": [0, 1], "y": g.y, "x": g.x},
    )
    mask = np.ones((3, 4), bool)
    mask[0, 0] = False
    table = grid.to_table(data, mask=mask)
    assert table.features.shape == (2 * 11 - 1, 2)
    back = grid.from_table(table.features["a"].to_numpy(), table, name="a")
    expected = np.where(table.mask, a, np.nan)
    np.testing.assert_array_equal(back.values, expected)
    assert grid.get_crs(back).to_epsg() == 32632
    with pytest.raises(ValueError, match="Expected 21 values"):
        grid.from_table(np.zeros(3), table)


def test_cell_size_metres_on_geographic_grid_at_60N():
    g = grid.make_grid((2, 2), 0.01, origin=(10.0, 59.99), crs="EPSG:4326")
    dy, dx = grid.cell_size_metres(g)
    np.testing.assert_allclose(dx / dy, np.cos(np.deg2rad(g.y.values)), rtol=1e-12)
    with pytest.raises(ValueError, match="axis unit 'US survey foot', not metres"):
        grid.cell_size_metres(grid.make_grid((2, 2), 1.0, crs="EPSG:2263"))


def test_lazy_public_namespace():
    assert ds.grid is grid
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ds.nonsense  # noqa: B018
