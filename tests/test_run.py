"""Tests for operational runs: configuration, tiled = in-memory, resume, faults, dask.distributed."""

import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import downscale as ds
from downscale.cli import main
from downscale.run import (
    COMPLETE_ATTRIBUTE,
    MODEL_ATTRIBUTE,
    ConfigError,
    downscale_step,
    is_complete,
    load_config,
    save_model_parameters,
)

DATA = Path(__file__).resolve().parent.parent / "data"
DAYS = [f"202406{d:02d}" for d in range(1, 7)]


def make_config(tmp_path, days=3, example="example.yaml", **changes):
    """Copy the example inputs to ``tmp_path`` and write a configuration for the first ``days`` days."""
    if not (tmp_path / "example").exists():
        shutil.copytree(DATA / "example", tmp_path / "example")
    config = yaml.safe_load((DATA / example).read_text())
    config["inputs"]["end"] = f"2024-06-{days:02d}"
    config["validation"] = {}
    config["outputs"]["directory"] = "out"
    for key, value in changes.items():
        section, name = key.split("__")
        config.setdefault(section, {})[name] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


#: A UNet small enough for the test suite: a few epochs of a one-level network on one torch thread.
TINY_UNET = dict(wald_factor=2, tile_size=2, base_channels=4, depth=1, max_epochs=3, n_mc=4, n_threads=1)


def read_output(path):
    with xr.open_dataset(path) as data:
        return data.load()


# ---------------------------------------------------------------- tiled == in memory


@pytest.mark.parametrize(
    "variable, params, tile",
    [
        ("lst", dict(trend="linear", calibrate_std=False), 2),
        ("lst", dict(trend="lightgbm", calibrate_std=False), 4),  # 4 does not divide 6: ragged tiles
        ("soil_moisture", dict(trend="linear", calibrate_std=False), 3),  # logit transform, two bounds
        ("precipitation", dict(trend="linear", residual="none", calibrate_std=False), 5),
    ],
)
def test_tiled_step_equals_in_memory_downscaler(variable, params, tile):
    scene = ds.datasets.synthetic_scene(variable, seed=2, shape=(60, 60), factor=10)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    mask = scene.mask if variable != "precipitation" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiled = downscale_step(scene.coarse, X, params, mask=mask, tile=tile, variables=["mean", "std"])
        # Lazy until computed: the fine arrays are dask arrays split in tiles of tile * factor pixels.
        assert tiled[variable].chunks[0][0] == min(tile * 10, 60)
        tiled = tiled.compute()
        model = ds.Downscaler(**params).fit(scene.coarse, X, mask=mask)
        fine, std = model.predict(X, return_std=True)
    np.testing.assert_array_equal(np.isnan(tiled[variable].values), np.isnan(fine.values))
    np.testing.assert_allclose(tiled[variable].values, fine.values, rtol=0, atol=1e-10, equal_nan=True)
    np.testing.assert_allclose(
        tiled[f"{variable}_std"].values, std.values, rtol=0, atol=1e-10, equal_nan=True
    )
    if params.get("residual", "atpk") == "atpk":
        back = ds.grid.block_mean(tiled[variable], 10, min_valid=1e-9)
        cells = np.isfinite(back.values) & np.isfinite(scene.coarse.values)
        np.testing.assert_allclose(back.values[cells], scene.coarse.values[cells], rtol=1e-9)
    assert tiled[variable].attrs["units"] == scene.coarse.attrs["units"]
    assert ds.grid.get_crs(tiled) == ds.grid.get_crs(scene.coarse)


def test_tiled_step_with_the_default_selects_the_trend_as_in_memory():
    """trend="auto" in tiles: the same retention, the same choice and the same fields as Downscaler()."""
    from downscale.run import _fit_tiled

    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=10)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ds.Downscaler().fit(scene.coarse, X, mask=scene.mask)
        tiled_model = _fit_tiled(ds.Downscaler(), scene.coarse, X, scene.mask, 7)
        tiled = downscale_step(
            scene.coarse, X, {}, mask=scene.mask, tile=7, variables=["mean", "std"]
        ).compute()
        fine, std = model.predict(X, return_std=True)
    np.testing.assert_allclose(tiled_model.retention_, model.retention_, rtol=1e-9)
    # The scene has covariates whose block means keep little of their spread: some are left out.
    assert len(model.features_used_) < len(model.feature_names_)
    assert model.selected_trend_ != "none"
    assert tiled_model.selected_trend_ == model.selected_trend_
    assert tiled_model.features_used_ == model.features_used_
    assert tiled_model.trend_weight_ == model.trend_weight_
    assert tiled_model.trend_within_share_ == pytest.approx(model.trend_within_share_, rel=1e-9)
    np.testing.assert_allclose(tiled["lst"].values, fine.values, rtol=0, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(tiled["lst_std"].values, std.values, rtol=0, atol=1e-9, equal_nan=True)


def test_tiled_step_with_trend_weight_cv_weighs_the_trend_as_in_memory():
    from downscale.run import _fit_tiled, _trend_label

    scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=10)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    params = dict(trend="lightgbm", trend_weight="cv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ds.Downscaler(**params).fit(scene.coarse, X, mask=scene.mask)
        tiled_model = _fit_tiled(ds.Downscaler(**params), scene.coarse, X, scene.mask, 7)
        tiled = downscale_step(scene.coarse, X, params, mask=scene.mask, tile=7, variables=["mean"]).compute()
    assert 0 < model.trend_weight_ < 1  # the trees are shrunk
    assert 0 < model.n_rounds_ < 300  # and stopped early
    assert tiled_model.trend_weight_ == model.trend_weight_ and tiled_model.n_rounds_ == model.n_rounds_
    label = f"lightgbm ({model.n_rounds_} rounds, weight {model.trend_weight_:.2f} from spatial CV)"
    assert _trend_label(tiled_model) == label  # the outputs' attribute
    np.testing.assert_allclose(
        tiled["lst"].values, model.predict(X).values, rtol=0, atol=1e-9, equal_nan=True
    )


def test_a_run_without_a_trend_uses_the_default_and_says_what_it_chose(tmp_path, capsys):
    config = make_config(tmp_path, days=2, model__parameters={}, outputs__variables=["mean"])
    assert main(["run", str(config)]) == 0
    printed = capsys.readouterr().out
    result = read_output(tmp_path / "out" / "lst_20240602.nc")
    chosen = result.attrs["downscale_trend"]
    assert chosen.startswith("auto: ") and chosen.split()[1] in ("none", "linear", "rf", "lightgbm")
    assert chosen in printed  # the summary table's message column
    assert f"trend {chosen})" in (tmp_path / "out" / "run.log").read_text()


def test_tiled_step_uses_dask_backed_covariates_lazily():
    scene = ds.datasets.synthetic_scene("lst", seed=1, shape=(40, 40), factor=10)
    X = ds.covariates.build(dem=scene.dem, location=True, features=["elevation", "slope"]).fillna(0.0)
    lazy = X.chunk({"y": 20, "x": 20})
    params = dict(trend="linear", calibrate_std=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = downscale_step(scene.coarse, lazy, params, tile=2, variables=["mean", "aoa"])
        assert all(hasattr(v.data, "dask") for v in out.data_vars.values())
        expected = ds.Downscaler(**params).fit(scene.coarse, X).predict(X)
    out = out.compute()
    np.testing.assert_allclose(out["lst"].values, expected.values, rtol=1e-12, atol=1e-10, equal_nan=True)
    assert set(np.unique(out["aoa"].values[np.isfinite(out["aoa"].values)])) <= {0.0, 1.0}


# ---------------------------------------------------------------------- end to end


def test_example_config_runs_end_to_end_and_resumes(tmp_path, capsys):
    config = make_config(tmp_path, days=6)
    text = yaml.safe_load(config.read_text())
    text["validation"] = yaml.safe_load((DATA / "example.yaml").read_text())["validation"]
    config.write_text(yaml.safe_dump(text))
    assert main(["run", str(config)]) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "6 done, 0 skipped (complete), 0 failed" in printed
    for day in DAYS:
        assert is_complete(
            out / f"lst_{day}.nc", ["lst", "lst_std", "aoa"], (120, 120), f"{day[:4]}-{day[4:6]}-{day[6:]}"
        )
    assert not list(out.glob(".*.part"))
    log = (out / "run.log").read_text()
    assert "done lst_20240603.nc[0] -> lst_20240603.nc" in log and "station scores" in log
    scores = (out / "station_scores.csv").read_text()
    assert scores.splitlines()[0].startswith("station,n,rmse")

    # The output equals the in-memory Downscaler on the same step and covariates.
    result = read_output(out / "lst_20240603.nc")
    coarse = xr.open_dataset(tmp_path / "example" / "coarse" / "lst_20240603.nc", decode_coords="all")["lst"]
    coarse = coarse.isel(time=0, drop=True).load()
    X = xr.open_dataset(out / "covariates.nc", decode_coords="all").load()
    land = xr.open_dataarray(tmp_path / "example" / "land.tif", engine="rasterio").squeeze("band", drop=True)
    mask = land.astype(bool).assign_coords(y=X["y"], x=X["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ds.Downscaler(trend="linear", residual="atpk").fit(coarse.astype(float), X, mask=mask)
        fine, std = model.predict(X, return_std=True)
    np.testing.assert_allclose(result["lst"].values[0], fine.values, rtol=1e-12, atol=1e-10, equal_nan=True)
    np.testing.assert_allclose(
        result["lst_std"].values[0], std.values, rtol=1e-12, atol=1e-10, equal_nan=True
    )
    assert result.attrs[COMPLETE_ATTRIBUTE] == 1
    assert ds.grid.get_crs(result).to_epsg() == 32632

    # A rerun checks the files and skips them all.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("lst_*.nc")}
    assert main(["run", str(config)]) == 0
    assert "0 done, 6 skipped (complete), 0 failed" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("lst_*.nc")}


def test_a_run_calibrates_the_std_at_the_stations_as_the_in_memory_downscaler(tmp_path, capsys):
    """calibration.stations: each step's std is scaled at its stations, exactly as Downscaler.fit(stations=...)."""
    calibration = {"stations": "example/stations.csv", "crs": "EPSG:32632", "noise": 0.5}
    config = make_config(tmp_path, days=2, outputs__variables=["mean", "std"])
    text = yaml.safe_load(config.read_text())
    text["calibration"] = calibration
    config.write_text(yaml.safe_dump(text))
    assert main(["run", str(config)]) == 0
    out = tmp_path / "out"
    log = (out / "run.log").read_text()
    assert "std calibrated at the stations of stations.csv (240 values on the grid, 0 outside it)" in log
    assert "std stations: scale" in capsys.readouterr().out  # the summary table says what set the std

    stations = ds.validation.read_stations(tmp_path / "example" / "stations.csv", crs="EPSG:32632")
    X = xr.open_dataset(out / "covariates.nc", decode_coords="all").load()
    land = xr.open_dataarray(tmp_path / "example" / "land.tif", engine="rasterio").squeeze("band", drop=True)
    mask = land.astype(bool).assign_coords(y=X["y"], x=X["x"])
    for day in DAYS[:2]:
        result = read_output(out / f"lst_{day}.nc")
        coarse = xr.open_dataset(tmp_path / "example" / "coarse" / f"lst_{day}.nc", decode_coords="all")[
            "lst"
        ]
        coarse = coarse.isel(time=0, drop=True).load()
        today = stations[stations["time"] == f"{day[:4]}-{day[4:6]}-{day[6:]}"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A run's stations calibrate the std; they do not join the trend (station_trend=False).
            model = ds.Downscaler(trend="linear", residual="atpk", station_trend=False).fit(
                coarse.astype(float), X, mask=mask, stations=today, station_noise=0.5
            )
            fine, std = model.predict(X, return_std=True)
        assert model.std_scale_stations_ == 40
        assert (
            result.attrs["downscale_std_calibration"]
            == f"stations: scale {model.std_scale_:.4g} from 40 values"
        )
        np.testing.assert_allclose(
            result["lst"].values[0], fine.values, rtol=1e-12, atol=1e-10, equal_nan=True
        )
        np.testing.assert_allclose(result["lst_std"].values[0], std.values, rtol=1e-12, equal_nan=True)

    # Other stations (here: another noise) make another std: the outputs are redone, not skipped.
    assert main(["run", str(config)]) == 0
    assert "0 done, 2 skipped (complete)" in capsys.readouterr().out
    text["calibration"]["noise"] = 0.0
    config.write_text(yaml.safe_dump(text))
    assert main(["run", str(config)]) == 0
    assert "2 done, 0 skipped (complete)" in capsys.readouterr().out


def test_a_step_with_too_few_station_values_is_calibrated_by_the_wald_protocol(tmp_path, capsys):
    few = tmp_path / "few.csv"
    shutil.copytree(DATA / "example", tmp_path / "example")
    rows = (DATA / "example" / "stations.csv").read_text().splitlines()
    few.write_text("\n".join([rows[0]] + [r for r in rows[1:] if ",2024-06-01," in r][:5]) + "\n")
    config = make_config(tmp_path, days=1, outputs__variables=["mean", "std"])
    text = yaml.safe_load(config.read_text())
    text["calibration"] = {"stations": str(few), "crs": "EPSG:32632"}
    config.write_text(yaml.safe_dump(text))
    assert main(["run", str(config)]) == 0
    note = read_output(tmp_path / "out" / "lst_20240601.nc").attrs["downscale_std_calibration"]
    assert note.startswith("wald: scale ") and "5 station value(s)" in note
    assert "std calibrated by the Wald protocol" in (tmp_path / "out" / "run.log").read_text()


def test_the_calibration_noise_can_be_a_column_of_the_stations(tmp_path, capsys):
    shutil.copytree(DATA / "example", tmp_path / "example")
    lines = (tmp_path / "example" / "stations.csv").read_text().splitlines()
    with_noise = [lines[0] + ",sigma"] + [line + ",0.5" for line in lines[1:]]
    (tmp_path / "example" / "noisy.csv").write_text("\n".join(with_noise) + "\n")
    outputs = {}
    for noise, stations in ((0.5, "stations.csv"), ("sigma", "noisy.csv")):
        config = make_config(tmp_path, days=1, outputs__variables=["mean", "std"])
        text = yaml.safe_load(config.read_text())
        text["outputs"]["directory"] = f"out_{noise}"
        text["calibration"] = {"stations": f"example/{stations}", "crs": "EPSG:32632", "noise": noise}
        config.write_text(yaml.safe_dump(text))
        assert main(["run", str(config)]) == 0
        outputs[noise] = read_output(tmp_path / f"out_{noise}" / "lst_20240601.nc")
    np.testing.assert_array_equal(outputs["sigma"]["lst_std"].values, outputs[0.5]["lst_std"].values)
    assert outputs["sigma"].attrs["downscale_std_calibration"].startswith("stations: scale")
    # A negative noise is refused before any work.
    (tmp_path / "example" / "noisy.csv").write_text(
        "\n".join([with_noise[0], with_noise[1][:-3] + "-1"]) + "\n"
    )
    assert main(["run", str(config)]) == 2
    assert (
        "'calibration.noise' ('sigma'): The station noise must be a standard deviation (>= 0); its least "
        "value is -1.0" in capsys.readouterr().err
    )


def test_local_cluster_gives_the_synchronous_output(tmp_path):
    sync = make_config(tmp_path / "a", days=2)
    assert main(["run", str(sync)]) == 0
    cluster = make_config(tmp_path / "b", days=2, dask__threads=1, dask__workers=2)
    assert main(["run", str(cluster)]) == 0
    log = (tmp_path / "b" / "out" / "run.log").read_text()
    assert "LocalCluster of 2 worker(s)" in log
    for day in DAYS[:2]:
        a = read_output(tmp_path / "a" / "out" / f"lst_{day}.nc")
        b = read_output(tmp_path / "b" / "out" / f"lst_{day}.nc")
        for name in ("lst", "lst_std", "aoa"):
            np.testing.assert_array_equal(a[name].values, b[name].values)


# ------------------------------------------------------------------------- faults


def test_corrupt_and_all_nan_inputs_are_reported_and_skipped(tmp_path, capsys):
    config = make_config(tmp_path, days=4)
    coarse = tmp_path / "example" / "coarse"
    (coarse / "lst_20240602.nc").write_bytes(b"this is not a netCDF file")
    with xr.open_dataset(coarse / "lst_20240603.nc") as data:
        empty = (data.load() * np.nan).astype(np.float32)
    empty.to_netcdf(coarse / "lst_20240603.nc")
    assert main(["run", str(config)]) == 1
    captured = capsys.readouterr()
    assert "2 done, 0 skipped (complete), 2 failed" in captured.out
    assert "lst_20240602.nc" in captured.out and "failed" in captured.out
    assert "NaN everywhere" in captured.out
    assert "2 step(s) failed" in captured.err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("lst_*.nc")) == ["lst_20240601.nc", "lst_20240604.nc"]
    log = (out / "run.log").read_text()
    assert "failed lst_20240602.nc" in log and "failed lst_20240603.nc" in log

    # Fixed inputs: the rerun does only the two that failed.
    shutil.copy(DATA / "example" / "coarse" / "lst_20240602.nc", coarse)
    shutil.copy(DATA / "example" / "coarse" / "lst_20240603.nc", coarse)
    assert main(["run", str(config)]) == 0
    assert "2 done, 2 skipped (complete), 0 failed" in capsys.readouterr().out


def test_interrupted_run_resumes_without_redoing_finished_steps(tmp_path, monkeypatch, capsys):
    config = make_config(tmp_path, days=4)
    original = xr.Dataset.to_netcdf
    writes = []

    def killed_on_third_output(self, path=None, *args, **kwargs):
        result = original(self, path, *args, **kwargs)
        if Path(str(path)).name.startswith(".lst_"):
            writes.append(path)
            if len(writes) == 3:
                assert Path(path).exists()  # the half-written temporary file is on disk...
                raise KeyboardInterrupt  # ...when Ctrl-C arrives

        return result

    monkeypatch.setattr(xr.Dataset, "to_netcdf", killed_on_third_output)
    assert main(["run", str(config)]) == 130
    assert "Interrupted" in capsys.readouterr().err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("lst_*.nc")) == ["lst_20240601.nc", "lst_20240602.nc"]
    assert not list(out.glob(".*.part"))  # no half file
    assert "interrupted after 2 of 4 step(s)" in (out / "run.log").read_text()
    monkeypatch.undo()

    # A partial output left by some other writer (no completion mark) and a truncated one are redone.
    first = read_output(out / "lst_20240601.nc")
    partial = first.copy()
    partial.attrs.pop(COMPLETE_ATTRIBUTE)
    partial.to_netcdf(out / "lst_20240603.nc")
    (out / "lst_20240604.nc").write_bytes((out / "lst_20240601.nc").read_bytes()[:5000])
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("lst_2024060[12].nc")}
    assert main(["run", str(config)]) == 0
    assert "2 done, 2 skipped (complete), 0 failed" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("lst_2024060[12].nc")}
    for day in DAYS[:4]:
        assert is_complete(out / f"lst_{day}.nc", ["lst"], (120, 120))


def test_sigterm_stops_like_ctrl_c_without_a_half_file(tmp_path, monkeypatch, capsys):
    config = make_config(tmp_path, days=1)
    original = xr.Dataset.to_netcdf

    def terminated_while_writing(self, path=None, *args, **kwargs):
        result = original(self, path, *args, **kwargs)
        if Path(str(path)).name.startswith(".lst_"):
            os.kill(os.getpid(), signal.SIGTERM)  # a batch system's time limit
        return result

    monkeypatch.setattr(xr.Dataset, "to_netcdf", terminated_while_writing)
    assert main(["run", str(config)]) == 130
    assert "Interrupted" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*lst_*"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only


def test_output_directory_that_is_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    config = make_config(tmp_path, outputs__directory=str(blocker / "out"))
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "output directory" in err and "is not writable" in err and "outputs.directory" in err


def test_run_help_says_what_a_new_user_needs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "usage: downscale run [-h] [--dry-run] [--scheduler ADDRESS] [--workers N] CONFIG.yaml" in text
    assert "data/example.yaml is a commented example" in text
    for written in ("run.log", "model.json or model.pt", "covariates.nc", "station_scores.csv"):
        assert written in text
    assert "resuming: run the same command again" in text
    assert "exit codes: 0 all steps done, 1 some steps failed" in text and "130 interrupted" in text


def test_dry_run_lists_the_work_and_writes_nothing(tmp_path, capsys):
    config = make_config(tmp_path, days=3)
    assert main(["run", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "3 time step(s)" in printed and "lst_20240603.nc[0] -> lst_20240603.nc: to do" in printed
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda c: c["outputs"].update(compresion=4),
            r"unknown key 'outputs.compresion'. Did you mean 'compression'\?",
        ),
        (lambda c: c.update(ouputs=c.pop("outputs")), r"unknown key 'ouputs'. Did you mean 'outputs'\?"),
        (
            lambda c: c["model"]["parameters"].update(trnd="rf"),
            r"'model.parameters.trnd'. Did you mean 'trend'\?",
        ),
        (
            lambda c: c["outputs"].update(compression="high"),
            r"'outputs.compression' must be a whole number, got 'high'",
        ),
        (
            lambda c: c["covariates"].update(dem="missing.tif"),
            r"'covariates.dem' names 'missing.tif', which does not exist",
        ),
        (lambda c: c["inputs"].update(files="nowhere/*.nc"), r"'inputs.files' matches no file"),
        (lambda c: c["inputs"].pop("variable"), r"missing key 'inputs.variable'"),
        (lambda c: c.pop("covariates"), r"missing section 'covariates'"),
        (lambda c: c["outputs"].update(variables=["mean", "sdt"]), r"Did you mean 'std'\?"),
        (lambda c: c["model"]["parameters"].update(trend="forest"), r"trend must be one of"),
        (lambda c: c["inputs"].update(start="yesterday-ish"), r"'inputs.start' must be a date"),
        (
            lambda c: c.update(calibration={"crs": "EPSG:32632"}),
            r"the 'calibration' section needs 'calibration.stations'",
        ),
        (
            lambda c: c.update(calibration={"stations": "example/stations.csv", "noise": -1}),
            r"'calibration.noise' must be a standard deviation \(>= 0\)",
        ),
        (
            lambda c: (
                c.update(calibration={"stations": "example/stations.csv"}),
                c["outputs"].update(variables=["mean"]),
            ),
            r"'calibration' calibrates the std of a Downscaler at the stations, but 'outputs.variables' "
            r"\(\['mean'\]\) has no 'std'",
        ),
        (
            lambda c: (
                c.update(calibration={"stations": "example/stations.csv"}),
                c["model"]["parameters"].update(calibrate_std=False),
            ),
            r"model.parameters.calibrate_std is false",
        ),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, capsys, edit, match):
    assert_config_error(make_config(tmp_path), capsys, edit, match)


def assert_config_error(path, capsys, edit, match):
    """Edit the config at ``path``: loading it raises ConfigError matching ``match``; the CLI exits 2."""
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    assert main(["run", str(path)]) == 2
    assert "downscale run: error:" in capsys.readouterr().err


def test_a_variable_that_no_input_file_has_is_a_config_error(tmp_path, capsys):
    path = make_config(tmp_path, inputs__variable="lts")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'inputs.variable' is 'lts', which none of the 6 input file(s) has (they have ['lst'])." in err
    assert "Did you mean 'lst'?" in err
    assert not list((tmp_path / "out").glob("lst_*.nc"))


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    path = make_config(tmp_path)
    monkeypatch.chdir(Path("/"))
    config = load_config(path)
    assert config.outputs.directory == tmp_path.resolve() / "out"
    assert config.covariates.dem == tmp_path.resolve() / "example" / "dem.tif"
    assert [p.name for p in config.inputs.paths] == [f"lst_{d}.nc" for d in DAYS]
    assert config.model.parameters == {"trend": "linear", "residual": "atpk"}
    assert config.outputs.variables == ["mean", "std", "aoa"]


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "No such configuration file" in capsys.readouterr().err


def test_is_complete_checks_variables_grid_time_and_mark(tmp_path):
    g = ds.grid.make_grid((4, 5), 1.0)
    data = xr.Dataset(
        {"lst": (("time", "y", "x"), np.ones((1, 4, 5)))},
        coords={**g.coords, "time": [np.datetime64("2024-06-01", "ns")]},
    )
    path = tmp_path / "a.nc"
    data.assign_attrs({COMPLETE_ATTRIBUTE: 1}).to_netcdf(path)
    assert is_complete(path, ["lst"], (4, 5), "2024-06-01")
    assert not is_complete(path, ["lst", "lst_std"], (4, 5))
    assert not is_complete(path, ["lst"], (4, 6))
    assert not is_complete(path, ["lst"], (4, 5), "2024-06-02")
    data.to_netcdf(path)
    assert not is_complete(path, ["lst"], (4, 5))


# ------------------------------------------------------------------------ models


def test_saved_downscaler_parameters_run_like_the_inline_ones(tmp_path, capsys):
    inline = make_config(tmp_path / "a", days=1)
    assert main(["run", str(inline)]) == 0
    saved = tmp_path / "a" / "out" / "model.json"  # every run keeps the parameter set it used
    assert load_config(inline).model.parameters == {"trend": "linear", "residual": "atpk"}
    written = yaml.safe_load(saved.read_text())
    assert written["format"] == "downscale.Downscaler"
    assert written["parameters"] == ds.Downscaler(trend="linear", residual="atpk").get_params(deep=False)

    # A parameter file saved from Python is a model of its own: the type is read from the file.
    path = save_model_parameters(ds.Downscaler(trend="linear", residual="atpk"), tmp_path / "linear.json")
    other = make_config(tmp_path / "b", days=1, model__path=str(path))
    text = yaml.safe_load(other.read_text())
    text["model"] = {"path": str(path)}
    other.write_text(yaml.safe_dump(text))
    config = load_config(other)
    assert config.model.type == "downscaler" and config.model.parameters["trend"] == "linear"
    assert main(["run", str(other)]) == 0
    capsys.readouterr()
    a = read_output(tmp_path / "a" / "out" / "lst_20240601.nc")
    b = read_output(tmp_path / "b" / "out" / "lst_20240601.nc")
    np.testing.assert_array_equal(a["lst"].values, b["lst"].values)
    assert a.attrs[MODEL_ATTRIBUTE] == b.attrs[MODEL_ATTRIBUTE]  # same model, however it was given

    # Another model makes the existing output stale: it is checked and redone, not kept.
    text["model"] = {"parameters": {"trend": "none"}}
    other.write_text(yaml.safe_dump(text))
    assert main(["run", str(other)]) == 0
    assert "1 done, 0 skipped (complete), 0 failed" in capsys.readouterr().out
    assert '"trend": "none"' in read_output(tmp_path / "b" / "out" / "lst_20240601.nc").attrs[MODEL_ATTRIBUTE]


def test_unet_is_trained_once_on_the_series_saved_and_reused(tmp_path, capsys):
    pytest.importorskip("torch")
    from downscale.models.unet import UNetDownscaler

    config = make_config(tmp_path, days=3, example="example_unet.yaml", model__parameters=TINY_UNET)
    assert main(["run", str(config)]) == 0
    assert "3 done, 0 skipped (complete), 0 failed" in capsys.readouterr().out
    out = tmp_path / "out"
    log = (out / "run.log").read_text()
    assert log.count("training the UNet (Wald protocol) on 3 time step(s)") == 1

    # Known truth: each output is the saved model's in-memory prediction of that step.
    model = UNetDownscaler.load(out / "model.pt")
    assert model.get_params()["mode"] == "wald" and model.get_params()["max_epochs"] == 3
    X = xr.open_dataset(out / "covariates.nc", decode_coords="all").load()
    land = xr.open_dataarray(tmp_path / "example" / "land.tif", engine="rasterio").squeeze("band", drop=True)
    mask = land.astype(bool).assign_coords(y=X["y"], x=X["x"]).drop_vars("spatial_ref")
    coarse = xr.open_dataset(tmp_path / "example" / "coarse" / "lst_20240602.nc", decode_coords="all")["lst"]
    coarse = coarse.isel(time=0, drop=True).astype(np.float64).load()
    fine = model.predict(X, coarse=coarse, mask=mask)
    _, std = model.predict(X, return_std=True, coarse=coarse, mask=mask)
    result = read_output(out / "lst_20240602.nc")
    np.testing.assert_allclose(result["lst"].values[0], fine.values, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(result["lst_std"].values[0], std.values, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(result["lst"].values[0][~mask.values]).all()
    back = ds.grid.block_mean(result["lst"].isel(time=0), 10, min_valid=1e-9)
    cells = np.isfinite(back.values) & np.isfinite(coarse.values)
    np.testing.assert_allclose(back.values[cells], coarse.values[cells], rtol=1e-9)  # coherent
    assert result.attrs[MODEL_ATTRIBUTE].startswith("UNetDownscaler sha256:")
    assert result["lst"].attrs["units"] == "K" and ds.grid.get_crs(result).to_epsg() == 32632

    # A rerun reuses the trained model (no second training) and skips the checked outputs.
    assert main(["run", str(config)]) == 0
    assert "0 done, 3 skipped (complete), 0 failed" in capsys.readouterr().out
    log = (out / "run.log").read_text()
    assert log.count("training the UNet") == 1 and "reusing the UNet trained by an earlier run" in log

    # The saved model as `model.path` (type read from the .pt suffix) gives the same outputs.
    saved = tmp_path / "trained.pt"
    shutil.copy(out / "model.pt", saved)
    text = yaml.safe_load(config.read_text())
    text["model"] = {"path": str(saved)}
    text["outputs"]["directory"] = "loaded"
    config.write_text(yaml.safe_dump(text))
    assert load_config(config).model.type == "unet"
    assert main(["run", str(config)]) == 0
    loaded = read_output(tmp_path / "loaded" / "lst_20240602.nc")
    np.testing.assert_array_equal(loaded["lst"].values, result["lst"].values)
    np.testing.assert_array_equal(loaded["lst_std"].values, result["lst_std"].values)
    assert "training" not in (tmp_path / "loaded" / "run.log").read_text()


def test_unet_training_that_cannot_be_done_is_a_config_error(tmp_path, capsys):
    pytest.importorskip("torch")
    config = make_config(
        tmp_path, days=1, example="example_unet.yaml", model__parameters=dict(TINY_UNET, tile_size=4)
    )
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "training the UNet on 1 time step(s) failed: Too few training tiles" in err
    assert "Change 'model.parameters'" in err
    assert not list((tmp_path / "out").glob("lst_*.nc")) and not (tmp_path / "out" / "model.pt").exists()


def _unet_model(c, **section):
    c["model"] = section
    c["outputs"]["variables"] = ["mean", "std"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda c: c["model"].update(type="unnet"),
            r"'model.type' must be 'downscaler' or 'unet', got 'unnet'. Did you mean 'unet'\?",
        ),
        (
            lambda c: c["model"].update(path="example/dem.tif"),
            r"'model' has both 'parameters' \(train a new model\) and 'path' \(a saved model, dem.tif\); keep one",
        ),
        (
            lambda c: c.update(model={"path": "nope.json"}),
            r"'model.path' names 'nope.json', which does not exist",
        ),
        (
            lambda c: c.update(model={"path": "example/stations.csv"}),
            r"'model.path' \(stations.csv\) must hold a mapping of Downscaler parameters",
        ),
        (
            lambda c: c.update(model={"path": "params.json"}),
            r"unknown key 'trnd' in 'model.path' \(params.json\). Did you mean 'trend'\?",
        ),
        (
            lambda c: c.update(model={"type": "downscaler", "path": "weights.pt"}),
            r"'model.path' names weights.pt, UNet weights, but 'model.type' is 'downscaler'. Set model.type: unet",
        ),
    ],
)
def test_model_config_errors_name_the_key_and_the_fix(tmp_path, capsys, edit, match):
    path = make_config(tmp_path)
    (tmp_path / "params.json").write_text('{"trnd": "rf"}')
    (tmp_path / "weights.pt").write_bytes(b"not torch")
    assert_config_error(path, capsys, edit, match)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda c: _unet_model(c, type="unet", parameters={"max_epoch": 3}),
            r"unknown key 'model.parameters.max_epoch'. Did you mean 'max_epochs'\?",
        ),
        (
            lambda c: _unet_model(c, type="unet", parameters={"mode": "supervised"}),
            r"'model.parameters.mode' must be 'wald' in a run, got 'supervised': a run has no fine truth",
        ),
        (
            lambda c: c.update(model={"type": "unet"}),
            r"'outputs.variables' lists 'aoa', the area of applicability of a Downscaler's trend; a UNet model "
            r"has none. Remove 'aoa'",
        ),
        (
            lambda c: _unet_model(c, type="unet", parameters={"dropout": 0.0}),
            r"'outputs.variables' lists 'std', which a UNet estimates by Monte-Carlo dropout, but its dropout is 0",
        ),
        (
            lambda c: _unet_model(c, type="unet", path="weights.pt"),
            r"'model.path' \(weights.pt\) cannot be loaded as a UNet \(.*\). Give a file written by UNetDownscaler.save",
        ),
        (
            lambda c: _unet_model(c, type="unet", path="params.json"),
            r"'model.path' names params.json, but a UNet is saved as a .pt file",
        ),
    ],
)
def test_unet_config_errors_name_the_key_and_the_fix(tmp_path, capsys, edit, match):
    pytest.importorskip("torch")
    test_model_config_errors_name_the_key_and_the_fix(tmp_path, capsys, edit, match)


def test_unet_without_torch_says_what_to_install(tmp_path, monkeypatch):
    path = make_config(tmp_path, example="example_unet.yaml")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ConfigError, match=r"'model.type' is 'unet', which needs PyTorch. .*pip install"):
        load_config(path)


def test_unet_dry_run_says_how_the_model_is_made(tmp_path, capsys):
    pytest.importorskip("torch")
    config = make_config(tmp_path, days=2, example="example_unet.yaml", model__parameters=TINY_UNET)
    assert main(["run", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "trained once (Wald protocol) on the 2 readable time step(s), saved to" in printed
    assert "model.pt" in printed and not (tmp_path / "out").exists()


def test_tiled_step_says_when_the_wald_scale_is_not_applied():
    """Soil moisture with its LST: a fifth of the trend's variance inside the coarse cells (as in memory)."""
    scene = ds.datasets.synthetic_scene("soil_moisture", seed=0, shape=(200, 200), factor=10)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, extra=scene.extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = downscale_step(
            scene.coarse, X, {"trend": "linear"}, mask=scene.mask, tile=7, variables=["mean", "std"]
        )
        model = ds.Downscaler(trend="linear").fit(scene.coarse, X, mask=scene.mask)
    note = out.attrs["downscale_std_calibration"]
    assert note.startswith(f"wald: scale 1; the protocol said {model.wald_scale_:.2f}, but ")
    assert note.endswith(
        "of the trend's variance lies inside the coarse cells, where it cannot see, so the std is not narrowed"
    )
    np.testing.assert_allclose(
        out["soil_moisture_std"].values,
        model.predict(X, return_std=True)[1].values,
        atol=1e-9,
        equal_nan=True,
    )
