"""Tests for the synthetic scenes: their physics and their bookkeeping."""

import numpy as np
import pytest
from scipy import ndimage

import downscale as ds

VARIABLES = ["lst", "precipitation", "no2", "soil_moisture"]
#: Sums of the NO2 truth and station values, seed 1, 100 x 100, as generated before the scene had an
#: emission inventory (the stations are drawn after it: they would change if it used the scene's stream).
PINNED_NO2_SUM = 163868.81385045074
PINNED_NO2_STATION_SUM = 727.0988651271234
#: The same for soil moisture (seed 1, 100 x 100, one day and two), before the scene had a 1 km LST.
PINNED_SOIL_MOISTURE_SUMS = {
    1: (1966.8810178858216, 8.005591603735514),
    2: (3946.6927245992, 15.910030154971619),
}


@pytest.fixture(scope="module", params=VARIABLES)
def scene(request):
    return ds.datasets.synthetic_scene(request.param, seed=0)


def test_coarse_is_block_mean_of_truth(scene):
    again = ds.grid.block_mean(scene.truth, scene.factor)
    np.testing.assert_allclose(scene.coarse.values, again.values, rtol=1e-12)
    assert ds.grid.nesting_factor(scene.coarse, scene.truth) == 25
    assert scene.coarse.shape == (16, 16) and scene.truth.shape == (400, 400)


def test_values_in_physical_range(scene):
    low, high = scene.bounds
    values = scene.truth.values[np.isfinite(scene.truth.values)]
    if low is not None:
        assert values.min() >= low
    if high is not None:
        assert values.max() <= high
    assert scene.truth.attrs["units"] and scene.truth.attrs["standard_name"]


def test_stations_are_on_land_with_plausible_values(scene):
    stations = scene.stations
    assert 20 <= len(stations) <= 80
    assert stations.crs.to_epsg() == 32632
    rows = np.abs(scene.truth.y.values[:, None] - stations.y.values[None, :]).argmin(axis=0)
    cols = np.abs(scene.truth.x.values[:, None] - stations.x.values[None, :]).argmin(axis=0)
    assert scene.mask.values[rows, cols].all()
    truth_at = scene.truth.values[rows, cols]
    error = stations["value"].to_numpy() - truth_at
    assert np.sqrt(np.mean(error**2)) < 0.2 * np.nanstd(scene.truth.values)


def test_lst_follows_lapse_rate():
    scene = ds.datasets.synthetic_scene("lst", seed=3)
    valid = np.isfinite(scene.truth.values)
    slope = np.polyfit(scene.dem.values[valid] / 1000, scene.truth.values[valid], 1)[0]
    assert -8.0 < slope < -5.0  # -6.5 K/km plus the partial effect of NDVI, which falls with height


def test_precipitation_is_zero_inflated_and_skewed():
    scene = ds.datasets.synthetic_scene("precipitation", seed=1)
    values = scene.truth.values.ravel()
    assert 0.1 < np.mean(values == 0) < 0.6
    wet = values[values > 0]
    assert np.mean(wet) > np.median(wet)  # right-skewed


def test_no2_is_lower_at_altitude():
    scene = ds.datasets.synthetic_scene("no2", seed=2)
    high = scene.dem.values > 2000
    low = (scene.dem.values < 500) & scene.mask.values
    assert np.median(scene.truth.values[high]) < np.median(scene.truth.values[low])


def test_no2_emission_inventory_places_the_hot_spots_but_not_their_plumes():
    scene = ds.datasets.synthetic_scene("no2", seed=0, n_times=2, shape=(200, 200), factor=10)
    inventory = scene.extra["emissions"]
    assert list(scene.extra) == ["emissions"] and inventory.dims == ("y", "x")
    assert inventory.attrs["units"] and ds.grid.get_crs(inventory).to_epsg() == 32632
    np.testing.assert_array_equal(inventory.x.values, scene.truth.x.values)
    assert float(inventory.min()) >= 0
    # The emitters stay put and the wind turns: each day's hottest pixel is within 10 km of an
    # inventory peak above a quarter of its maximum (the spurious entries are below that).
    peaks = np.argwhere(
        (inventory.values == ndimage.maximum_filter(inventory.values, size=5))
        & (inventory.values > 0.25 * float(inventory.max()))
    )
    for day in range(2):
        hottest = np.unravel_index(int(np.argmax(scene.truth.isel(time=day).values)), inventory.shape)
        assert np.min(np.hypot(*(peaks - np.array(hottest)).T)) <= 10
    assert not np.allclose(scene.truth.isel(time=0).values, scene.truth.isel(time=1).values)
    # The inventory explains what elevation (the altitude attenuation) does not: the log of the
    # truth, less its linear fit on elevation, correlates with the log of the inventory (0.59 measured).
    log_truth = np.log(scene.truth.isel(time=0).values.ravel())
    elevation = scene.dem.values.ravel()
    left = log_truth - np.polyval(np.polyfit(elevation, log_truth, 1), elevation)
    assert np.corrcoef(np.log1p(inventory.values.ravel()), left)[0, 1] > 0.5
    for variable in ("lst", "precipitation"):
        assert ds.datasets.synthetic_scene(variable, seed=0, shape=(40, 40), factor=10).extra == {}


def test_the_inventory_has_its_own_random_numbers():
    """The NO2 truth and stations are what they were before the scene had an inventory (pinned values)."""
    scene = ds.datasets.synthetic_scene("no2", seed=1, shape=(100, 100), factor=10)
    again = ds.datasets.synthetic_scene("no2", seed=1, shape=(100, 100), factor=10)
    np.testing.assert_array_equal(scene.extra["emissions"].values, again.extra["emissions"].values)
    assert float(scene.truth.values.sum()) == pytest.approx(PINNED_NO2_SUM, rel=1e-12)
    assert float(scene.stations["value"].sum()) == pytest.approx(PINNED_NO2_STATION_SUM, rel=1e-12)


def test_soil_moisture_lst_is_cooler_where_the_bare_soil_is_wet():
    """The LST, less its lapse-rate and canopy terms, falls by 40 K per m3 m-3 of the bare soil's wetness.

    The slope is fitted on differences between neighbouring pixels, which cancel the smooth weather
    anomaly (it could correlate with the smooth rain field by chance) and leave the retrieval noise.
    """
    scene = ds.datasets.synthetic_scene("soil_moisture", seed=0)
    lst = scene.extra["lst"]
    assert lst.attrs["units"] == "K" and lst.name == "lst" and lst.dims == ("y", "x")
    land = scene.mask.values
    np.testing.assert_array_equal(np.isfinite(lst.values), land)
    cover = np.clip((scene.ndvi.values - 0.05) / 0.85, 0, 1) ** 2
    wetness = (1 - cover) * (scene.truth.values - ds.datasets.LST_REFERENCE_MOISTURE)
    left = lst.values + 6.5 * scene.dem.values / 1000 + 5 * cover - 305
    both = land[:, 1:] & land[:, :-1]
    d_wetness, d_left = np.diff(wetness, axis=1)[both], np.diff(left, axis=1)[both]
    slope = np.polyfit(d_wetness, d_left, 1)[0]
    assert slope == pytest.approx(-ds.datasets.LST_SOIL_COOLING, abs=1.0)
    noise = d_left - slope * d_wetness  # the difference of two pixels' retrieval noise
    assert np.std(noise) == pytest.approx(np.sqrt(2) * ds.datasets.LST_NOISE, rel=0.05)


@pytest.mark.parametrize("n_times", [1, 2])
def test_the_soil_moisture_lst_has_its_own_random_numbers(n_times):
    scene = ds.datasets.synthetic_scene("soil_moisture", seed=1, shape=(100, 100), factor=10, n_times=n_times)
    truth_sum, station_sum = PINNED_SOIL_MOISTURE_SUMS[n_times]
    assert float(np.nansum(scene.truth.values)) == pytest.approx(truth_sum, rel=1e-12)
    assert float(scene.stations["value"].sum()) == pytest.approx(station_sum, rel=1e-12)
    lst = scene.extra["lst"]
    assert lst.dims == scene.truth.dims
    if n_times == 2:  # a new day, a new LST
        assert not np.allclose(lst.isel(time=0), lst.isel(time=1), equal_nan=True)
    assert "extra covariates lst" in repr(scene)


def test_multi_time_scene_and_determinism():
    a = ds.datasets.synthetic_scene("soil_moisture", seed=5, n_times=3, shape=(100, 100), factor=10)
    b = ds.datasets.synthetic_scene("soil_moisture", seed=5, n_times=3, shape=(100, 100), factor=10)
    assert a.coarse.dims == ("time", "y", "x") and a.coarse.sizes["time"] == 3
    np.testing.assert_array_equal(a.truth.values, b.truth.values)
    assert set(a.stations.columns) >= {"station_id", "time", "value", "geometry"}
    assert len(a.stations) == 3 * 40


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown variable 'snow'; expected one of"):
        ds.datasets.synthetic_scene("snow")
    with pytest.raises(ValueError, match=r"not a whole number of 25 x 25 coarse blocks.*shape=\(100, 100\)"):
        ds.datasets.synthetic_scene("lst", shape=(110, 100))
