"""Tests for the `downscale` command line (help, info, error reporting)."""

import numpy as np
import pytest
import xarray as xr

from downscale import cli, grid


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "run", "validate", "info"):
        assert command in text
    assert "Start with `downscale demo`" in text


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "usage: downscale" in capsys.readouterr().out


def test_info_describes_grid_crs_and_variables(tmp_path, capsys):
    g = grid.make_grid((3, 4), 1000.0, origin=(0.0, 0.0), crs="EPSG:32632")
    data = xr.Dataset(
        {
            "lst": (
                ("time", "y", "x"),
                np.zeros((2, 3, 4)),
                {"units": "K", "long_name": "land surface temperature"},
            )
        },
        coords={"time": np.array(["2024-06-01", "2024-06-02"], dtype="datetime64[ns]"), **g.coords},
    )
    path = tmp_path / "a.nc"
    data.to_netcdf(path)
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "EPSG:32632" in out
    assert "x: 4 cells from 500 to 3500, step 1000" in out
    assert "time: 2 steps" in out
    assert "lst ('time', 'y', 'x') K land surface temperature" in out


def test_info_on_missing_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "nope.nc")]) == 2
    assert "downscale info: error: No such file:" in capsys.readouterr().err


def test_demo_writes_cf_netcdf_map_and_report(tmp_path, capsys):
    import rioxarray  # noqa: F401

    output = tmp_path / "demo"
    assert cli.main(["demo", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE against truth: downscaled" in printed and str(output / "fine.nc") in printed
    # The std is calibrated at every other station; the report checks it at the others.
    assert "std calibrated at 20 stations" in printed and "the other 20 check it" in printed
    data = xr.open_dataset(output / "fine.nc", decode_coords="all")
    assert data.rio.crs.to_epsg() == 32632
    assert {"lst", "lst_std"} <= set(data.data_vars)
    assert data["lst"].attrs["units"] == "K" and data.attrs["Conventions"] == "CF-1.8"
    assert data.sizes == {"y": 400, "x": 400}
    # Coherent: the fine field averages back to the coarse input of the same scene.
    from downscale import datasets

    scene = datasets.synthetic_scene("lst", seed=0)
    back = grid.block_mean(data["lst"].load(), 25)
    valid = np.isfinite(scene.coarse.values)
    np.testing.assert_allclose(back.values[valid], scene.coarse.values[valid], rtol=1e-9)
    # LST is a land variable: downscaled on land pixels only, NaN at sea like the truth.
    np.testing.assert_array_equal(np.isfinite(data["lst"].values), scene.mask.values)
    assert (output / "maps.png").stat().st_size > 10_000
    report = (output / "report.md").read_text()
    assert "RMSE against the fine truth" in report and "![maps](maps.png)" in report
    assert "the station scores below are of the other 20" in report
    assert "20 station values lie inside the 90 % prediction interval of a station value" in report


def test_demo_can_calibrate_by_the_wald_protocol_instead(tmp_path, capsys):
    output = tmp_path / "demo"
    assert cli.main(["demo", "--output", str(output), "--calibrate", "wald"]) == 0
    printed = capsys.readouterr().out
    assert "std calibrated by the Wald protocol (factor" in printed and "stations (factor" not in printed
    report = (output / "report.md").read_text()
    assert "std calibrated by the Wald protocol, factor" in report
    assert "40 station values lie inside" in report  # every station checks it: none calibrated it


def test_demo_says_when_the_wald_protocol_may_not_narrow_the_std(tmp_path, capsys):
    """Soil moisture with its LST: most of the trend's detail lies inside the coarse cells."""
    output = tmp_path / "demo"
    assert (
        cli.main(["demo", "--variable", "soil_moisture", "--output", str(output), "--calibrate", "wald"]) == 0
    )
    printed = capsys.readouterr().out
    assert "std calibrated by the Wald protocol (factor 1.00; the protocol said 0." in printed
    assert "of the trend's variance lies inside the coarse cells, where it cannot see" in printed
    assert "where it cannot see, so the std is not narrowed" in (output / "report.md").read_text()


def test_demo_with_lightgbm_says_how_many_rounds_it_kept(tmp_path, capsys, monkeypatch):
    from downscale import datasets

    # A storm the terrain does not explain: early stopping keeps no round (and SHAP is skipped).
    small = datasets.synthetic_scene("precipitation", seed=0, shape=(200, 200), factor=10)
    monkeypatch.setattr(datasets, "synthetic_scene", lambda variable, seed=0: small)
    with pytest.warns(UserWarning, match="no boosting round predicts better than the constant mean"):
        code = cli.main(
            ["demo", "--variable", "precipitation", "--trend", "lightgbm", "--output", str(tmp_path)]
        )
    assert code == 0
    printed = capsys.readouterr().out
    assert "LightGBM kept 0 of its 300 boosting rounds (early stopping on spatial folds" in printed
    assert "no round beat the mean, the trend is the constant" in printed
    assert "skipped: The trend='lightgbm' of this Downscaler kept 0 boosting rounds" in printed
