"""Tests for downscale.validation.stations: reading, CRS handling, point sampling, time matching, scores."""

import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import downscale as ds
from downscale.validation import metrics
from downscale.validation.stations import extract_at_points, match_times, read_stations, station_scores

CRS = "EPSG:32632"


def _plane(times=None):
    """f = 2 x + 3 y (x, y in km) on a 20 x 30 grid of 1 km cells at 400-420 km E, 5000-5030 km N."""
    grid = ds.grid.make_grid((30, 20), 1000.0, origin=(400_000.0, 5_000_000.0), crs=CRS)
    xx, yy = np.meshgrid(grid.x.values / 1000, grid.y.values / 1000)
    values = 2 * xx + 3 * yy
    if times is None:
        field = xr.DataArray(values, dims=("y", "x"), coords={"y": grid.y, "x": grid.x})
    else:
        stack = np.stack([values + 100 * i for i in range(len(times))])
        field = xr.DataArray(stack, dims=("time", "y", "x"), coords={"time": times, "y": grid.y, "x": grid.x})
    return ds.grid.set_crs(field, CRS)


def _points(x, y, crs=CRS, **columns):
    return gpd.GeoDataFrame(columns, geometry=gpd.points_from_xy(x, y), crs=crs)


def test_read_csv_x_y_with_declared_crs(tmp_path):
    path = tmp_path / "stations.csv"
    pd.DataFrame(
        {
            "station": ["a", "b"],
            "x": [401_500.0, 410_200.0],
            "y": [5_001_500.0, 5_020_000.0],
            "value": [1.0, 2.0],
        }
    ).to_csv(path, index=False)
    stations = read_stations(path, crs=CRS)
    assert stations.crs.to_epsg() == 32632
    assert stations["station_id"].tolist() == ["a", "b"]
    assert np.allclose(stations.geometry.x, [401_500.0, 410_200.0])


def test_read_csv_lon_lat_defaults_to_wgs84_and_reprojects_on_sampling(tmp_path):
    field = _plane()
    # the centre of the cell at x = 405.5 km, y = 5010.5 km, written in lon/lat
    utm = _points([405_500.0], [5_010_500.0])
    lonlat = utm.to_crs("EPSG:4326")
    path = tmp_path / "stations.csv"
    pd.DataFrame(
        {
            "Longitude": lonlat.geometry.x,
            "Latitude": lonlat.geometry.y,
            "value": [0.0],
            "Date": ["2020-06-01T10:00:00+02:00"],
        }
    ).to_csv(path, index=False)
    stations = read_stations(path)
    assert stations.crs.to_epsg() == 4326
    assert stations["time"].iloc[0] == pd.Timestamp("2020-06-01 08:00")  # converted to naive UTC
    assert stations["station_id"].tolist() == ["S000"]
    assert extract_at_points(field, stations).tolist() == pytest.approx([2 * 405.5 + 3 * 5010.5])


@pytest.mark.parametrize(("suffix", "driver"), [(".geojson", "GeoJSON"), (".gpkg", "GPKG")])
def test_read_geojson_and_geopackage(tmp_path, suffix, driver):
    source = _points(
        [401_500.0, 410_500.0], [5_001_500.0, 5_020_500.0], station_id=["a", "b"], value=[1.0, 2.0]
    )
    path = tmp_path / f"stations{suffix}"
    source.to_crs("EPSG:4326").to_file(path, driver=driver)
    stations = read_stations(path)
    assert stations.crs.to_epsg() == 4326
    values = extract_at_points(_plane(), stations)
    assert values == pytest.approx([2 * 401.5 + 3 * 5001.5, 2 * 410.5 + 3 * 5020.5])
    with pytest.raises(ValueError, match="declares the CRS .* but crs='EPSG:3035' was passed"):
        read_stations(path, crs="EPSG:3035")


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Station file not found"):
        read_stations(tmp_path / "missing.csv")
    path = tmp_path / "bad.csv"
    pd.DataFrame({"east": [1.0], "north": [2.0], "value": [0.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="Cannot find the coordinate columns .* x='...', y='...'"):
        read_stations(path)
    assert read_stations(path, x="east", y="north").geometry.x.tolist() == [1.0]


def test_stations_without_crs_on_a_projected_grid(tmp_path):
    """Another CRS with none declared: refuse instead of silently mislocating every station."""
    path = tmp_path / "stations.csv"
    pd.DataFrame({"x": [405_500.0], "y": [5_010_500.0], "value": [0.0]}).to_csv(path, index=False)
    stations = read_stations(path)
    assert stations.crs is None
    with pytest.raises(ValueError, match="The stations have no CRS.*EPSG:32632.*crs='EPSG:4326'"):
        extract_at_points(_plane(), stations)


def test_nearest_and_bilinear_on_an_analytic_plane():
    field = _plane()
    rng = np.random.default_rng(0)
    # interior points (between the outermost cell centres), where bilinear is exact for a plane
    x = rng.uniform(400_500.0, 419_500.0, size=50)
    y = rng.uniform(5_000_500.0, 5_029_500.0, size=50)
    stations = _points(x, y)
    assert extract_at_points(field, stations, "bilinear") == pytest.approx(2 * x / 1000 + 3 * y / 1000)
    # nearest: the value at the centre of the containing cell
    centre_x = np.floor(x / 1000) + 0.5
    centre_y = np.floor(y / 1000) + 0.5
    assert extract_at_points(field, stations, "nearest") == pytest.approx(2 * centre_x + 3 * centre_y)
    with pytest.raises(ValueError, match="method must be 'nearest' or 'bilinear'"):
        extract_at_points(field, stations, "cubic")


def test_bilinear_skips_nan_neighbours_and_holds_edges():
    field = _plane()
    field[0, 0] = np.nan
    # halfway between the centres of cells (0, 0) and (0, 1): only (0, 1) is valid
    station = _points([401_000.0], [5_029_500.0])
    assert extract_at_points(field, station, "bilinear") == pytest.approx([2 * 401.5 + 3 * 5029.5])
    # in the outer half of an edge cell the value is held
    edge = _points([419_900.0], [5_015_500.0])
    assert extract_at_points(_plane(), edge, "bilinear") == pytest.approx([2 * 419.5 + 3 * 5015.5])


def test_stations_outside_the_grid_warn_and_give_nan():
    stations = _points([405_500.0, 500_000.0], [5_010_500.0, 5_010_500.0], station_id=["in", "far"])
    with pytest.warns(
        UserWarning, match=r"1 station\(s\) lie outside the grid \(far\); their values are NaN"
    ):
        values = extract_at_points(_plane(), stations)
    assert values[0] == pytest.approx(2 * 405.5 + 3 * 5010.5)
    assert np.isnan(values[1])


def test_all_stations_outside_the_grid_is_an_error():
    # coordinates in lon/lat wrongly declared as UTM: everything lands near the origin
    stations = _points([7.1, 7.3], [45.2, 45.4])
    with pytest.raises(
        ValueError, match="None of the 2 stations lies inside the grid.*Check the stations' CRS"
    ):
        extract_at_points(_plane(), stations)


def test_time_matching():
    times = pd.to_datetime(["2020-06-01", "2020-06-02", "2020-06-03"])
    field = _plane(times)
    stations = _points(
        [405_500.0] * 3,
        [5_010_500.0] * 3,
        time=pd.to_datetime(["2020-06-03 06:00", "2020-06-01 00:00", "2020-06-02 11:00"]),
    )
    base = 2 * 405.5 + 3 * 5010.5
    assert extract_at_points(field, stations) == pytest.approx([base + 200, base, base + 100])
    matched = match_times(field, stations)
    assert matched["field_time"].tolist() == [times[2], times[0], times[1]]
    # outside the default tolerance (half a day) -> warned and dropped
    late = _points([405_500.0] * 2, [5_010_500.0] * 2, time=pd.to_datetime(["2020-06-02", "2020-06-05"]))
    with pytest.warns(
        UserWarning, match="1 of 2 station records have no prediction time step within 0 days 12:00"
    ):
        values = extract_at_points(field, late)
    assert values[0] == pytest.approx(base + 100) and np.isnan(values[1])
    # a wider tolerance takes it
    assert extract_at_points(field, late, tolerance="3D")[1] == pytest.approx(base + 200)


def test_no_time_overlap_is_an_error():
    field = _plane(pd.to_datetime(["2020-06-01", "2020-06-02"]))
    stations = _points([405_500.0], [5_010_500.0], time=pd.to_datetime(["2021-01-01"]), value=[1.0])
    with pytest.raises(ValueError, match="No time overlap .*2021-01-01.*2020-06-01 00:00:00 to 2020-06-02"):
        station_scores(field, stations)
    with pytest.raises(ValueError, match="has 2 time steps but the stations have no 'time' column"):
        extract_at_points(field, _points([405_500.0], [5_010_500.0]))


def test_scores_per_station_with_time_series_and_overall():
    times = pd.date_range("2020-06-01", periods=6, freq="D")
    field = _plane(times)
    base_a, base_b = 2 * 401.5 + 3 * 5001.5, 2 * 410.5 + 3 * 5020.5
    rng = np.random.default_rng(0)
    error_a = rng.normal(0.5, 1.0, size=6)
    error_b = rng.normal(-1.0, 2.0, size=6)
    truth_a = base_a + 100 * np.arange(6)
    truth_b = base_b + 100 * np.arange(6)
    stations = pd.concat(
        [
            _points([401_500.0] * 6, [5_001_500.0] * 6, station_id="a", time=times, value=truth_a - error_a),
            _points([410_500.0] * 6, [5_020_500.0] * 6, station_id="b", time=times, value=truth_b - error_b),
        ],
        ignore_index=True,
    )
    scores = station_scores(field, stations, n_boot=200)
    assert scores.index.tolist() == ["a", "b", "overall"]
    assert scores.index.name == "station"
    for column in (
        "n",
        "rmse",
        "mae",
        "bias",
        "r",
        "ubrmse",
        "kge",
        "nse",
        "rmse_low",
        "rmse_high",
        "kge_high",
    ):
        assert column in scores.columns
    assert "gdown" not in scores.columns
    assert scores.loc["a", "bias"] == pytest.approx(error_a.mean())
    assert scores.loc["b", "rmse"] == pytest.approx(np.sqrt(np.mean(error_b**2)))
    assert scores.loc["a", "kge"] == pytest.approx(metrics.kge(truth_a - error_a, truth_a))
    all_errors = np.concatenate([error_a, error_b])
    assert scores.loc["overall", "mae"] == pytest.approx(np.abs(all_errors).mean())
    assert scores.loc["overall", "n"] == 12
    assert (
        scores.loc["overall", "rmse_low"]
        <= scores.loc["overall", "rmse"]
        <= scores.loc["overall", "rmse_high"]
    )
    assert np.isnan(scores.loc["a", "rmse_low"])  # intervals only for the overall row


def test_scores_single_time_hold_the_error_and_gdown_on_a_scene():
    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=20, n_stations=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every station is on the grid: no warning expected
        perfect = station_scores(scene.truth, scene.stations, coarse=scene.coarse, n_boot=200)
    one = scene.stations["station_id"].iloc[0]
    observed = scene.stations.set_index("station_id").loc[one, "value"]
    at_truth = extract_at_points(scene.truth, scene.stations.iloc[:1])[0]
    assert perfect.loc[one, "bias"] == pytest.approx(at_truth - observed)
    assert perfect.loc[one, "rmse"] == pytest.approx(abs(at_truth - observed))
    assert np.isnan(perfect.loc[one, "r"]) and np.isnan(perfect.loc[one, "gdown"])
    # the truth beats the coarse field at the stations: positive downscaling gain
    assert perfect.loc["overall", "gdown"] > 0.3
    assert perfect.loc["overall", "gdown_low"] > 0
    # the coarse field repeated on the fine grid is no downscaling at all: gain exactly 0
    repeated = ds.grid.upsample(scene.coarse, 20, "nearest")
    none = station_scores(repeated, scene.stations, coarse=scene.coarse, ci=False)
    assert none.loc["overall", "gdown"] == pytest.approx(0.0)
    assert none.loc["overall", "rmse"] > perfect.loc["overall", "rmse"]


def test_scores_bad_value_column_and_too_few_stations():
    field = _plane()
    stations = _points([405_500.0], [5_010_500.0], obs=[1.0])
    with pytest.raises(
        ValueError, match="no column 'value' for the observations; their columns are \\['obs'\\]"
    ):
        station_scores(field, stations)
    with pytest.warns(UserWarning, match="Only 1 valid station value"):
        scores = station_scores(field, stations, value="obs", ci=False)
    assert scores.loc["overall", "n"] == 1


def test_a_dataset_is_not_a_field():
    dataset = _plane().to_dataset(name="lst")
    with pytest.raises(TypeError, match="field must be an xarray DataArray .* `dataset\\['lst'\\]`"):
        extract_at_points(dataset, _points([405_500.0], [5_010_500.0]))


def test_calibrate_std_makes_intervals_cover_the_station_values():
    """Split conformal: a std three times too narrow (what the Wald scale, 0.29, made of the soil-moisture
    std before it was kept from narrowing a trend that varies inside the coarse cells) is widened back."""
    from downscale.validation import calibrate_std

    scene = ds.datasets.synthetic_scene("soil_moisture", seed=0)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fine, std = (
            ds.Downscaler(trend="linear", calibrate_std=False)
            .fit(scene.coarse, X, mask=scene.mask)
            .predict(X, return_std=True)
        )
    std = std * 0.3
    valid = np.isfinite(scene.truth.values)
    error = np.abs(fine.values - scene.truth.values)[valid]

    def coverage(spread):
        return float(np.mean(error <= 1.6448536269514722 * spread.values[valid]))

    # Calibrate on half of the stations, check on the other half and on the truth.
    stations = scene.stations
    calibration, check = stations.iloc[::2], stations.iloc[1::2]
    calibrated = calibrate_std(fine, std, calibration)
    assert coverage(std) < 0.5
    assert calibrated.attrs["std_scale"] > 2 and calibrated.attrs["std_scale_stations"] == len(calibration)
    assert 0.8 <= coverage(calibrated) <= 0.99
    inside = np.abs(check["value"].values - extract_at_points(fine, check)) <= 1.6448536269514722 * (
        extract_at_points(calibrated, check)
    )
    assert inside.mean() >= 0.75
    np.testing.assert_allclose(calibrated.values, std.values * calibrated.attrs["std_scale"], equal_nan=True)


def test_calibrate_std_errors():
    from downscale.validation import calibrate_std

    field = xr.DataArray(np.zeros((2, 2)), dims=("y", "x"), coords={"y": [1.5, 0.5], "x": [0.5, 1.5]})
    std = xr.ones_like(field)
    points = gpd.GeoDataFrame(
        {"value": [1.0, 2.0, 3.0]}, geometry=gpd.points_from_xy([0.5, 1.5, 0.5], [1.5, 1.5, 0.5])
    )
    with pytest.raises(ValueError, match=r"3 station value\(s\) .* a 90% interval needs at least 9"):
        calibrate_std(field, std, points)
    assert calibrate_std(field, std, points, coverage=0.5).attrs["std_scale_stations"] == 3
    with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
        calibrate_std(field, std, points, coverage=90)
    with pytest.raises(ValueError, match="std must be a DataArray on the grid of pred"):
        calibrate_std(field, std.isel(x=[0]), points)
    with pytest.raises(ValueError, match="no column 'obs'"):
        calibrate_std(field, std, points, value="obs")
    with pytest.raises(ValueError, match="The stations have no column 'sigma' for the noise"):
        calibrate_std(field, std, points, coverage=0.5, noise="sigma")
    with pytest.raises(ValueError, match=r"The station noise must be a standard deviation \(>= 0\)"):
        calibrate_std(field, std, points, coverage=0.5, noise=-1.0)


def test_conformal_scale_with_station_noise_leaves_the_noise_out_of_the_pixel_std():
    """Hand-computed: a pair is inside pred +- z sqrt((s std)**2 + noise**2) once s >= sqrt(e**2 - z**2 noise**2) / (z std)."""
    from downscale.validation import calibrate_std
    from downscale.validation.stations import conformal_scale

    z = 1.6448536269514722  # 90 %: with 10 pairs the rank ceil(11 * 0.9) = 10 is the largest ratio
    errors = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1.0, 10.0])
    noise = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0]) / z
    spread = np.full(10, 2.0 / z)
    # needed scales: 0, 0, sqrt(3)/2, sqrt(8)/2, 2, 2.5, 3, 3.5, 0.5 and sqrt(100 - 36)/2 = 4
    scale, n = conformal_scale(errors, np.zeros(10), spread, noise=noise)
    assert (scale, n) == (pytest.approx(4.0), 10)
    assert conformal_scale(errors, np.zeros(10), spread)[0] == pytest.approx(5.0)  # 10 / 2 without the noise
    # The same through calibrate_std, with the noise as a column of the stations or as one number.
    field = xr.DataArray(
        np.zeros((2, 10)), dims=("y", "x"), coords={"y": [1.5, 0.5], "x": np.arange(10) + 0.5}
    )
    points = gpd.GeoDataFrame(
        {"value": errors, "sigma": noise}, geometry=gpd.points_from_xy(np.arange(10) + 0.5, np.full(10, 0.5))
    )
    std = xr.full_like(field, 2.0 / z)
    assert calibrate_std(field, std, points, noise="sigma").attrs["std_scale"] == pytest.approx(4.0)
    assert calibrate_std(field, std, points, noise=8.0 / z).attrs["std_scale"] == pytest.approx(
        3.0
    )  # sqrt(100-64)/2


def test_one_step_of_a_series_matches_only_the_records_of_its_date():
    """field.isel(time=k) keeps a scalar time: the other days' records are left out, with a warning."""
    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(100, 100), factor=10, n_times=3, n_stations=10)
    day = scene.truth.isel(time=1)
    with pytest.warns(UserWarning, match="20 of 30 station records have no prediction time step within"):
        scores = ds.validation.station_scores(day, scene.stations)
    assert scores.loc["overall", "n"] == 10
    same_day = scene.stations[scene.stations["time"] == scene.truth["time"].values[1]]
    expected = np.sqrt(
        np.mean((same_day["value"].to_numpy() - ds.validation.extract_at_points(day, same_day)) ** 2)
    )
    assert scores.loc["overall", "rmse"] == pytest.approx(expected, rel=1e-12)
    # A field without any time still matches every record.
    assert ds.validation.station_scores(day.drop_vars("time"), scene.stations).loc["overall", "n"] == 30
