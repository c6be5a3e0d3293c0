# %% [markdown]
# # 07 · Operational runs: a config file, a time series of netCDF files, resuming, dask
#
# In production you do not call `Downscaler` in a notebook: you have a folder of daily coarse files,
# static covariate rasters, and a job that must survive being killed. `downscale run CONFIG.yaml`
# does that. It reads the files named in a YAML configuration, builds the covariates once, downscales
# each time step in tiles, writes one compressed CF-netCDF file per step **atomically** (a temporary
# file renamed at the end), and skips steps whose output is complete when it is run again.
#
# This notebook makes a small example (six days of LST, 12 x 12 cells of 10 km to 1 km), runs it,
# interrupts it, resumes it, runs it on a dask `LocalCluster`, and reads the outputs back.
# Everything is written to a temporary folder.

# %%
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

import downscale as ds
from downscale.cli import main as downscale_cli   # what the `downscale` command calls

work = Path(tempfile.mkdtemp(prefix="downscale_tutorial_07_"))
print("working in", work)

# %% [markdown]
# ## The inputs
#
# Operational inputs are files. We write the synthetic scene the way a data provider would: one
# netCDF file per day for the coarse LST (with its CRS as a CF grid mapping), and GeoTIFFs for the
# 1 km DEM, NDVI and land mask; stations in a CSV with projected x / y columns.

# %%
scene = ds.datasets.synthetic_scene("lst", seed=0, n_times=6, shape=(120, 120), factor=10)
(work / "inputs" / "coarse").mkdir(parents=True)
for t in range(scene.coarse.sizes["time"]):
    day = scene.coarse.isel(time=slice(t, t + 1)).astype(np.float32)
    name = f"lst_{pd.Timestamp(day.time.values[0]):%Y%m%d}.nc"
    day.to_dataset(name="lst").to_netcdf(work / "inputs" / "coarse" / name,
                                         encoding={"lst": {"zlib": True, "_FillValue": np.float32(np.nan)}})
for name, raster in {"dem": scene.dem, "ndvi": scene.ndvi, "land": scene.mask.astype(np.uint8)}.items():
    raster = raster.drop_vars([c for c in raster.coords if c not in ("y", "x", "spatial_ref")])
    raster.attrs.pop("grid_mapping", None)
    raster.rio.to_raster(work / "inputs" / f"{name}.tif")
stations = scene.stations.assign(x=scene.stations.geometry.x, y=scene.stations.geometry.y)
stations[["station_id", "time", "x", "y", "value"]].to_csv(work / "inputs" / "stations.csv", index=False)
print(sorted(str(p.relative_to(work)) for p in (work / "inputs").rglob("*.*")))

# %% [markdown]
# ## The configuration
#
# One YAML file says everything: which files and variable, which covariates, which model, where
# and what to write, and how to compute. Paths are relative to the configuration file. Every
# `Downscaler` parameter can go under `model.parameters`; we pass the trend explicitly so that the
# run does not depend on a default.

# %%
CONFIG = """\
inputs:
  files: inputs/coarse/lst_*.nc      # a glob; each time step of each file is one output
  variable: lst

covariates:
  dem: inputs/dem.tif                # defines the fine grid
  ndvi: inputs/ndvi.tif
  mask: inputs/land.tif              # 1 where a value is wanted
  location: true
  features: [elevation, slope, northness]

model:
  type: downscaler
  parameters:
    trend: linear
    residual: atpk

outputs:
  directory: {directory}
  pattern: "{{variable}}_{{time:%Y%m%d}}.nc"
  variables: [mean, std, aoa]        # prediction, its standard deviation, area of applicability
  tile: 6                            # tile side in coarse cells: memory grows with its square

validation:
  stations: inputs/stations.csv
  crs: EPSG:32632

dask:
  threads: 1
"""
config = work / "run.yaml"
config.write_text(CONFIG.format(directory="output"))
print(config.read_text())

# %% [markdown]
# `--dry-run` checks the configuration and lists the work without computing anything. In a terminal
# this is `downscale run run.yaml --dry-run`; here we call the same entry point from Python.

# %%
exit_code = downscale_cli(["run", str(config), "--dry-run"])
print("exit code", exit_code)

# %% [markdown]
# ## Run, interrupt, resume
#
# We start the run as a separate process, exactly as from a terminal, and press "Ctrl-C" (send
# `SIGINT`) as soon as the second day's file is written: the situation of a job killed by a wall-time
# limit or a reboot.

# %%
environment = dict(os.environ)
environment["PYTHONPATH"] = os.pathsep.join(
    [str(Path(ds.__file__).resolve().parent.parent), environment.get("PYTHONPATH", "")]
)
output = work / "output"
process = subprocess.Popen([sys.executable, "-m", "downscale.cli", "run", str(config)],
                           env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
deadline = time.monotonic() + 300
while process.poll() is None and time.monotonic() < deadline:
    if len(list(output.glob("lst_*.nc"))) >= 2:
        process.send_signal(signal.SIGINT)
        break
    time.sleep(0.1)
stdout, stderr = process.communicate(timeout=300)
print("exit code", process.returncode, "(130 = interrupted)")
print(stderr.strip().splitlines()[-1] if stderr.strip() else "")
print("files so far:", sorted(p.name for p in output.glob("lst_*.nc")))
print("temporary files left:", sorted(p.name for p in output.glob(".*")))

# %% [markdown]
# The files that were finished are kept, and the step under way leaves nothing behind (its
# temporary file is removed). Running the same command again checks each output (all variables, grid,
# time, a completion mark, and that it was made by the same model) and does only what is missing:

# %%
exit_code = downscale_cli(["run", str(config)])
print("exit code", exit_code)

# %% [markdown]
# The log (`output/run.log`) keeps the history of both runs:

# %%
log = (output / "run.log").read_text().splitlines()
print("\n".join(line for line in log if "interrupted after" in line or " done, " in line))

# %% [markdown]
# ## The same run on a dask cluster
#
# Large domains are computed in tiles (`outputs.tile`) with dask. By default a run uses local threads
# (`dask.threads`); `dask.workers: N` (or `--workers N`) starts a `LocalCluster` of N processes, and
# `--scheduler tcp://host:8786` uses an existing `dask.distributed` cluster. The result does not
# depend on where it was computed. We run two days on a two-worker `LocalCluster` into another folder
# and compare.

# %%
cluster_config = work / "run_cluster.yaml"
text = CONFIG.format(directory="output_cluster").replace("  variable: lst\n", "  variable: lst\n  end: 2024-06-02\n")
cluster_config.write_text(text.split("validation:")[0] + "dask:\n  threads: 1\n")   # two days, no station scores
start = time.perf_counter()
exit_code = downscale_cli(["run", str(cluster_config), "--workers", "2"])
print(f"exit code {exit_code}, {time.perf_counter() - start:.1f} s")
print([line for line in (work / "output_cluster" / "run.log").read_text().splitlines() if "computing with" in line][-1])
for path in sorted((work / "output_cluster").glob("lst_*.nc")):
    a, b = ds.io.read_netcdf(output / path.name), ds.io.read_netcdf(path)
    print(path.name, "identical to the threaded run:", all(np.array_equal(a[v].values, b[v].values, equal_nan=True)
                                                           for v in ("lst", "lst_std", "aoa")))

# %% [markdown]
# On two shared cores a cluster is slower than threads (starting processes, moving tiles between
# them); it pays off with many cores, many tiles or many machines.
#
# ## Reading the outputs
#
# `ds.io.read_netcdf` opens a file as a grid with its CRS (read from the CF grid mapping); with several
# variables it returns a `Dataset`.

# %%
day = ds.io.read_netcdf(output / "lst_20240603.nc")
print(day)
print("CRS:", ds.grid.get_crs(day).to_string())

# %%
fig = ds.plot.plot_maps(
    {"coarse input (10 km)": scene.coarse.isel(time=2), "downscaled (1 km)": day["lst"].isel(time=0),
     "standard deviation": day["lst_std"].isel(time=0), "area of applicability": day["aoa"].isel(time=0)},
    share=["coarse input (10 km)", "downscaled (1 km)"],
    cmap={"coarse input (10 km)": "inferno", "downscaled (1 km)": "inferno", "standard deviation": "Greys",
          "area of applicability": "RdYlGn"},
    suptitle="2024-06-03",
)

# %% [markdown]
# The standard deviation is nearly uniform: it is mostly the trend's error, estimated once per day by
# spatial cross-validation; it is largest on the west coast, where land pixels sit in coarse cells
# that are mostly sea and have no value. The `aoa` layer is 1 where the trend's covariates are like
# those of the 10 km training cells:

# %%
print(f"share of land pixels inside the area of applicability: {float(day['aoa'].where(day['aoa'].notnull()).mean()):.0%}")

# %% [markdown]
# Almost a quarter of the 1 km pixels is outside: strongly north- or south-facing pixels
# that no 10 km average shows. The trend extrapolates there (tutorial 04 shows what the AOA does and
# does not tell you).
#
# The whole series, one file per day, joins along time. At one station it gives a time series of the
# downscaled LST next to the station's measurements:

# %%
series = xr.concat([ds.io.read_netcdf(path)["lst"] for path in sorted(output.glob("lst_*.nc"))], dim="time")
station = scene.stations[scene.stations["station_id"] == "S000"]
at_station = series.sel(x=station.geometry.x.iloc[0], y=station.geometry.y.iloc[0], method="nearest")
coarse_at_station = scene.coarse.sel(x=station.geometry.x.iloc[0], y=station.geometry.y.iloc[0], method="nearest")

import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(at_station.time.values, at_station.values, "o-", label="downscaled (1 km pixel)")
ax.plot(coarse_at_station.time.values, coarse_at_station.values, "s--", color="grey", label="coarse cell (10 km)")
ax.plot(station["time"].values, station["value"].values, "k^", label="station S000")
ax.set_xlabel("date")
ax.set_ylabel("land surface temperature [K]")
ax.set_title("One station, six days")
ax.legend(fontsize=8)
fig.autofmt_xdate()
fig.tight_layout()

# %% [markdown]
# With `validation.stations` set, the run also scored the series at the stations
# (`output/station_scores.csv`, one row per station and an `overall` row). We add the same score of
# bilinear interpolation of the coarse files, the baseline:

# %%
table = pd.read_csv(output / "station_scores.csv", index_col=0)
bilinear = ds.grid.upsample(scene.coarse, scene.factor, "bilinear").where(scene.mask)
baseline = ds.validation.station_scores(bilinear, scene.stations, ci=False)
pd.DataFrame({"downscale run": table.loc["overall"], "bilinear": baseline.loc["overall"]}).T[
    ["n", "rmse", "bias", "r", "kge"]].round(3)

# %% [markdown]
# ## Calibrating the standard deviation at stations
#
# By default each day's `std` is calibrated by the Wald protocol (tutorial 02): one level up, where
# the coarse field is the truth. That cannot see the error inside a coarse cell. Stations can: a
# `calibration` section makes every step scale its `std` so that 90 % intervals hold 90 % of that
# day's station values (split conformal prediction), with the stations' own measurement `noise` left
# out of the pixel's std. We calibrate at half of the stations and keep the other half to validate;
# the same stations for both would check the intervals in-sample.

# %%
ids = sorted(scene.stations["station_id"].unique())
calibration_ids = ids[::2]
table = scene.stations.assign(x=scene.stations.geometry.x, y=scene.stations.geometry.y)
columns = ["station_id", "time", "x", "y", "value"]
table[table["station_id"].isin(calibration_ids)][columns].to_csv(work / "inputs" / "calibration.csv", index=False)
table[~table["station_id"].isin(calibration_ids)][columns].to_csv(work / "inputs" / "check.csv", index=False)
calibrated_config = CONFIG.format(directory="output_calibrated").replace(
    "validation:\n  stations: inputs/stations.csv",
    "calibration:\n  stations: inputs/calibration.csv\n  crs: EPSG:32632\n  noise: 0.5"
    "                         # the stations' own error (K)\n\nvalidation:\n  stations: inputs/check.csv",
)
(work / "run_calibrated.yaml").write_text(calibrated_config)
print(calibrated_config[calibrated_config.index("calibration:"):calibrated_config.index("dask:")])
exit_code = downscale_cli(["run", str(work / "run_calibrated.yaml")])

# %% [markdown]
# The summary says what set each day's std. Judged at the check stations (with their 0.5 K noise)
# and against the full truth, which this synthetic scene has:

# %%
check = ds.validation.read_stations(work / "inputs" / "check.csv", crs="EPSG:32632")
rows = {}
for label, folder in {"Wald protocol": "output", "stations": "output_calibrated"}.items():
    days = xr.concat([ds.io.read_netcdf(p) for p in sorted((work / folder).glob("lst_*.nc"))], dim="time")
    error = np.abs(check["value"].to_numpy() - ds.validation.extract_at_points(days["lst"], check))
    sigma = ds.validation.extract_at_points(days["lst_std"], check)
    inside_truth = np.abs(scene.truth - days["lst"]) <= 1.6449 * days["lst_std"]
    rows[label] = {
        "check stations inside": np.mean(error <= 1.6449 * np.sqrt(sigma**2 + 0.5**2)),
        "truth pixels inside": float(inside_truth.where(scene.mask).mean()),
        "median std (K)": float(days["lst_std"].median()),
    }
pd.DataFrame(rows).T.round(2)

# %% [markdown]
# On this scene the Wald protocol shrinks the std far too much: its 90 % intervals hold about half of
# the truth pixels and under three quarters of the check stations. Calibrated at 20 stations a day,
# they hold 93 % of the check stations and 89 % of the truth pixels. The daily scale is noisy, though
# (0.45 to 1.72 here): with 20 values the 90 % conformal rank is the 19th of 20. More stations per
# step give a steadier scale.

# %% [markdown]
# ## What could go wrong?
#
# **A typo in the configuration.** Unknown keys are refused with a suggestion, before any work starts
# (`load_config` is what `downscale run` uses to read the file):

# %%
from downscale.run import ConfigError, load_config

bad = work / "bad.yaml"
for wrong, right in [("  tile: 6", "  tiles: 6"), ("    trend: linear", "    trend: forest"),
                     ("inputs/coarse/lst_*.nc", "input/coarse/lst_*.nc")]:
    bad.write_text(CONFIG.format(directory="output").replace(wrong, right))
    try:
        load_config(bad)
    except ConfigError as error:
        print("ConfigError:", error, "\n")

# %% [markdown]
# **A corrupt input file** (a download cut short). That step fails, the others go on, and the run ends
# with exit code 1 and the list of failures. Replace the file and run again: only the failed step is
# redone.

# %%
broken_inputs = work / "broken"
(broken_inputs / "inputs" / "coarse").mkdir(parents=True)
for path in (work / "inputs").rglob("*.*"):
    target = broken_inputs / path.relative_to(work)
    target.write_bytes(path.read_bytes())
(broken_inputs / "inputs" / "coarse" / "lst_20240602.nc").write_bytes(b"<html>504 Gateway Time-out</html>")
(broken_inputs / "run.yaml").write_text(cluster_config.read_text().replace("output_cluster", "output"))  # two days
exit_code = downscale_cli(["run", str(broken_inputs / "run.yaml")])
print("exit code", exit_code)

# %% [markdown]
# **A netCDF file without a CRS.** Files from other tools often lack the grid mapping. `read_netcdf`
# refuses to guess; declare it with `crs=` if you know it.

# %%
no_crs = work / "no_crs.nc"
xr.Dataset({"lst": (("time", "y", "x"), day["lst"].values)},
           coords={"time": day.time.values, "y": day.y.values, "x": day.x.values}).to_netcdf(no_crs)
try:
    ds.io.read_netcdf(no_crs)
except ValueError as error:
    print("ValueError:", error)
print("with crs='EPSG:32632':", ds.grid.get_crs(ds.io.read_netcdf(no_crs, crs="EPSG:32632")).to_string())

# %%
import shutil

shutil.rmtree(work)   # clean up the temporary folder
