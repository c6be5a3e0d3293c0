"""Tests for `downscale validate` and the validation report: scores by hand, figures, interval coverage, errors."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import downscale as ds
from downscale import cli
from downscale.validation.report import markdown_table, write_report

NOISE = 0.5  # K, of the prediction; the scene's stations carry 0.5 K too


@pytest.fixture(scope="module")
def scene():
    return ds.datasets.synthetic_scene("lst", seed=2, shape=(100, 100), factor=10, n_stations=200)


@pytest.fixture
def files(scene, tmp_path):
    """A prediction file (truth + 0.5 K noise, its std and an AOA mask) and a CSV of stations in x/y."""
    rng = np.random.default_rng(5)
    prediction = scene.truth + NOISE * rng.standard_normal(scene.truth.shape)
    prediction.name = "lst"
    prediction.attrs = dict(scene.truth.attrs)
    # The difference station - prediction has two independent 0.5 K noises.
    std = xr.full_like(prediction, NOISE * np.sqrt(2)).rename("lst_std")
    aoa = (scene.dem < 1500).rename("aoa")
    data = ds.grid.set_crs(
        xr.Dataset({"lst": prediction, "lst_std": std, "aoa": aoa.astype("int8")}), "EPSG:32632"
    )
    path = tmp_path / "pred.nc"
    ds.io.write_netcdf(data, path)
    stations = pd.DataFrame(scene.stations.drop(columns="geometry"))
    csv = tmp_path / "stations.csv"
    stations.to_csv(csv, index=False)
    return path, csv, prediction, stations


def _nearest(prediction, x, y):
    col = np.rint((x - float(prediction.x[0])) / float(prediction.x[1] - prediction.x[0])).astype(int)
    row = np.rint((y - float(prediction.y[0])) / float(prediction.y[1] - prediction.y[0])).astype(int)
    return prediction.values[row, col]


def test_validate_writes_the_report_with_hand_checked_scores(files, tmp_path, capsys):
    path, csv, prediction, stations = files
    output = tmp_path / "report"
    with pytest.warns(UserWarning, match="no CRS; they are taken in the prediction's CRS"):
        assert cli.main(["validate", str(path), str(csv), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"Report written to {output / 'report.md'}" in printed

    predicted = _nearest(prediction, stations["x"].to_numpy(), stations["y"].to_numpy())
    errors = predicted - stations["value"].to_numpy()
    scores = pd.read_csv(output / "scores.csv", index_col=0)
    overall = scores.loc["overall"]
    np.testing.assert_allclose(overall["rmse"], np.sqrt(np.mean(errors**2)), rtol=1e-9)
    np.testing.assert_allclose(overall["bias"], errors.mean(), rtol=1e-9)
    assert overall["rmse_low"] < overall["rmse"] < overall["rmse_high"]
    assert overall["n"] == len(stations)
    # Two independent 0.5 K noises: RMSE close to 0.71 K.
    assert 0.6 < overall["rmse"] < 0.8

    report = (output / "report.md").read_text()
    assert "| rmse |" in report and "## Power spectrum" in report and "## Area of applicability" in report
    for figure in ("station_scatter.png", "map_stations.png", "spectrum.png", "aoa.png"):
        assert (output / figure).stat().st_size > 1000
        assert f"({figure})" in report
    # The std is the true spread of station - prediction: about 90 % of stations inside the 90 % interval.
    coverage = float(report.split("Uncertainty: ")[1].split("%")[0])
    inside = np.mean(np.abs(errors) <= 1.6448536269514722 * NOISE * np.sqrt(2)) * 100
    assert coverage == pytest.approx(round(inside), abs=0.5)
    assert 82 <= coverage <= 97
    aoa_share = float(report.split("## Area of applicability\n\n")[1].split("%")[0])
    files_aoa = xr.open_dataset(path)["aoa"].values.astype(bool).mean() * 100
    assert aoa_share == pytest.approx(files_aoa, abs=0.05)


def test_default_output_folder_and_lon_lat_stations(files, capsys):
    path, csv, prediction, stations = files
    from pyproj import Transformer

    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(
        stations["x"].to_numpy(), stations["y"].to_numpy()
    )
    geographic = stations.drop(columns=["x", "y"]).assign(lon=lon, lat=lat, obs=stations["value"])
    geo_csv = csv.with_name("geo.csv")
    geographic.drop(columns="value").to_csv(geo_csv, index=False)
    assert cli.main(["validate", str(path), str(geo_csv), "--value-column", "obs", "--variable", "lst"]) == 0
    output = path.with_name("pred_validation")
    assert (output / "report.md").exists()
    scores = pd.read_csv(output / "scores.csv", index_col=0)
    predicted = _nearest(prediction, stations["x"].to_numpy(), stations["y"].to_numpy())
    np.testing.assert_allclose(
        scores.loc["overall", "rmse"],
        np.sqrt(np.mean((predicted - stations["value"].to_numpy()) ** 2)),
        rtol=1e-9,
    )


def test_bad_input_is_a_clear_error(files, tmp_path, capsys):
    path, csv, prediction, stations = files
    assert cli.main(["validate", str(path), str(csv), "--variable", "ndvi"]) == 2
    assert "has no variable 'ndvi'" in capsys.readouterr().err
    assert cli.main(["validate", str(path), str(csv), "--value-column", "temperature"]) == 2
    assert "no column 'temperature'" in capsys.readouterr().err
    two = xr.Dataset({"a": prediction, "b": prediction})
    two_path = tmp_path / "two.nc"
    ds.io.write_netcdf(two, two_path)
    assert cli.main(["validate", str(two_path), str(csv)]) == 2
    assert "2 candidate prediction variables ['a', 'b']" in capsys.readouterr().err
    far = stations.assign(x=stations["x"] + 1e7)
    far_csv = tmp_path / "far.csv"
    far.to_csv(far_csv, index=False)
    with pytest.warns(UserWarning):
        assert cli.main(["validate", str(path), str(far_csv)]) == 2
    assert (
        "downscale validate: error: None of the 200 stations lies inside the grid" in capsys.readouterr().err
    )
    assert cli.main(["validate", str(tmp_path / "missing.nc"), str(csv)]) == 2
    assert cli.main(["validate", str(path), str(csv), "--noise", "sigma"]) == 2
    assert "--noise 'sigma' is neither a number nor a column of stations.csv" in capsys.readouterr().err


def test_validate_allows_for_the_station_noise(files, tmp_path, capsys):
    """The file's std is NOISE * sqrt(2), right for station - prediction; with --noise the check adds 0.5 K."""
    path, csv, _, _ = files
    reports = {}
    for option in ([], ["--noise", "0.5"], ["--noise", "noise_std"]):
        folder = tmp_path / ("report" + "_".join(option))
        assert cli.main(["validate", str(path), str(csv), "-o", str(folder), *option]) == 0
        reports[" ".join(option)] = (folder / "report.md").read_text()
    share = {k: int(r.split("Uncertainty: ")[1].split("%")[0]) for k, r in reports.items()}
    assert "with the stations' own noise" not in reports[""] and 84 <= share[""] <= 96
    # std**2 + noise**2 = 3 NOISE**2: intervals sqrt(1.5) too wide, about 96 % inside
    assert (
        reports["--noise 0.5"].split("Uncertainty: ")[1]
        == reports["--noise noise_std"].split("Uncertainty: ")[1]
    )
    assert "with the stations' own noise" in reports["--noise 0.5"] and share["--noise 0.5"] > share[""]


def test_report_with_model_evidence(scene, tmp_path):
    X = ds.covariates.build(dem=scene.dem, features=["elevation"], location=False)
    model = ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    fine = model.predict(X)
    cv = ds.validation.cross_validate(model, scene.coarse, X, cv=ds.validation.SpatialBlockKFold(n_splits=3))
    wald = ds.validation.wald_score(model, scene.coarse, X, factor=2)
    explained = ds.explain.shap_values(model, X, sample=300)
    path = write_report(
        tmp_path / "full",
        fine,
        scene.stations,
        coarse=scene.coarse,
        truth=scene.truth,
        cv={"spatial": cv},
        wald=wald,
        shap=explained,
        n_boot=100,
    )
    report = path.read_text()
    for section in (
        "## Cross-validation",
        "## Wald protocol",
        "## Covariate importance (SHAP)",
        "Effective resolution",
    ):
        assert section in report
    for figure in ("cv_scores.png", "shap_summary.png", "shap_dependence.png", "spectrum.png"):
        assert (path.parent / figure).exists()
    scores = pd.read_csv(path.parent / "scores.csv", index_col=0)
    assert set(scores["source"]) == {"stations", "truth", "cross-validation", "wald"}
    np.testing.assert_allclose(scores.loc["spatial", "rmse"], cv.scores["rmse"])
    assert "gdown" in scores.columns  # the coarse field was given


def test_markdown_table():
    frame = pd.DataFrame({"n": [3.0], "rmse": [np.nan], "name": ["a"]}, index=pd.Index(["x"], name="row"))
    assert markdown_table(frame).splitlines() == [
        "| row | n | rmse | name |",
        "|---|---|---|---|",
        "| x | 3 |  | a |",
    ]


def test_report_points_to_calibrate_std_when_intervals_are_too_narrow(scene, files, tmp_path):
    """A std three times too small: the report says so and gives the conformal factor of calibrate_std."""
    _, _, prediction, _ = files
    honest = xr.full_like(prediction, NOISE * np.sqrt(2)).rename("lst_std")
    narrow = honest / 3
    report = write_report(tmp_path / "narrow", prediction, scene.stations, std=narrow, n_boot=50).read_text()
    expected = ds.validation.calibrate_std(prediction, narrow, scene.stations).attrs["std_scale"]
    assert "The intervals are too narrow here" in report and f"a factor of {expected:.2f}" in report
    assert 2.0 < expected < 4.5  # about 3, the factor the std was shrunk by
    fine = write_report(tmp_path / "fine", prediction, scene.stations, std=honest, n_boot=50).read_text()
    assert "too narrow" not in fine


def test_report_and_calibration_leave_the_known_station_noise_out_of_the_pixel_std(scene, files, tmp_path):
    """The prediction's pixel error is 0.5 K and so is the stations' noise: std = 0.5 K is right for a pixel.

    A station value differs from the prediction by both (0.71 K), so without the noise the check finds
    the intervals too narrow (about 75 % inside); with ``station_noise`` it finds about 90 % and leaves
    the std alone, and ``calibrate_std(..., noise=...)`` gives a factor near 1.
    """
    _, _, prediction, _ = files
    pixel_std = xr.full_like(prediction, NOISE).rename("lst_std")
    without = write_report(
        tmp_path / "without", prediction, scene.stations, std=pixel_std, n_boot=50
    ).read_text()
    assert "The intervals are too narrow here" in without
    report = write_report(
        tmp_path / "with", prediction, scene.stations, station_noise="noise_std", std=pixel_std, n_boot=50
    ).read_text()
    assert "too narrow" not in report and "with the stations' own noise" in report
    share = int(report.split("Uncertainty: ")[1].split("%")[0])
    assert 84 <= share <= 96
    scale = ds.validation.calibrate_std(prediction, pixel_std, scene.stations, noise="noise_std").attrs[
        "std_scale"
    ]
    assert 0.8 < scale < 1.25
    assert (scene.stations["noise_std"] == NOISE).all()
