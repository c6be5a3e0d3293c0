"""Benchmark of ``downscale run``: throughput and peak memory of a tiled run.

Domain: 100 x 100 coarse cells (25 km) -> 2500 x 2500 fine pixels (1 km), factor 25,
10 daily time steps, three covariates read lazily from a netCDF stack, trend
"linear" + area-to-point kriging of the residuals, outputs mean and std.
Three dask set-ups are compared (``SETUPS``): one thread, two threads of the local
scheduler, and a LocalCluster of two in-process workers; and one thread with the std
calibrated at 40 stations a day (``calibration`` section), against one thread without.
Each configuration runs in a fresh subprocess, and its peak resident memory
(``ru_maxrss``, which includes the dask worker threads of a LocalCluster with
``processes: false``) is reported, with the throughput in fine pixels per
second. The same domain at 4x the area (200 x 200 -> 5000 x 5000, fewer
steps: memory does not grow with the number of steps) checks that peak memory
depends on the tile size, not on the domain.

Run: ``python benchmarks/bench_run.py`` (about 12 minutes on 2 cores; ``--quick`` for a smaller check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FACTOR = 25
CELL = 1000.0
#: Station values a day, for the run whose std is calibrated at stations.
STATIONS = 40


def elevation(x, y):
    return (
        1000.0
        + 800.0 * np.sin(x / 30_000.0) * np.cos(y / 45_000.0)
        + 300.0 * np.sin(x / 7_000.0 + y / 11_000.0)
    )


def make_inputs(folder, n_coarse, n_times, seed=0):
    """Covariate stack and coarse files written in row blocks, so the setup itself stays small."""
    import netCDF4
    import pandas as pd
    import xarray as xr

    import downscale as ds

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_fine = n_coarse * FACTOR
    fine = ds.grid.make_grid((n_fine, n_fine), CELL, origin=(300_000.0, 5_000_000.0), crs="EPSG:32632")
    coarse = ds.grid.coarse_grid(fine, FACTOR)
    x_fine, y_fine = fine["x"].values, fine["y"].values

    # The stack: create the file with xarray (coordinates, CRS), then fill it in blocks of coarse rows.
    names = ("elevation", "easting", "northing")
    template = xr.Dataset(
        {n: (("y", "x"), np.zeros((1, 1), dtype=np.float32)) for n in names},
        coords={"y": y_fine[:1], "x": x_fine[:1]},
    )
    stack_path = folder / "covariates.nc"
    with netCDF4.Dataset(stack_path, "w") as nc:
        nc.createDimension("y", n_fine)
        nc.createDimension("x", n_fine)
        for axis, values in (("y", y_fine), ("x", x_fine)):
            variable = nc.createVariable(axis, "f8", (axis,))
            variable[:] = values
            variable.units = "m"
        crs = nc.createVariable("spatial_ref", "i4")
        crs.crs_wkt = ds.grid.get_crs(fine).to_wkt()
        crs.spatial_ref = crs.crs_wkt
        for name in names:
            v = nc.createVariable(name, "f4", ("y", "x"), zlib=True, complevel=1, chunksizes=(500, 500))
            v.grid_mapping = "spatial_ref"
        block_elevation = np.empty((n_coarse, n_coarse))
        rows = 20 * FACTOR
        for start in range(0, n_fine, rows):
            ys = y_fine[start : start + rows]
            xx, yy = np.meshgrid(x_fine, ys)
            z = elevation(xx, yy)
            nc["elevation"][start : start + rows, :] = z
            nc["easting"][start : start + rows, :] = xx
            nc["northing"][start : start + rows, :] = yy
            r = z.shape[0] // FACTOR
            block_elevation[start // FACTOR : start // FACTOR + r] = z.reshape(
                r, FACTOR, n_coarse, FACTOR
            ).mean(axis=(1, 3))
    del template
    rng = np.random.default_rng(seed)
    stations = []
    gx, gy = np.meshgrid(np.arange(n_coarse), np.arange(n_coarse))
    for t in range(n_times):
        anomaly = 2.0 * np.sin(gx / 9.0 + t) * np.cos(gy / 13.0 - t) + rng.normal(0, 0.2, gx.shape)
        field = 300.0 - 0.0065 * block_elevation + anomaly
        day = np.datetime64("2024-06-01", "ns") + np.timedelta64(t, "D")
        da = xr.DataArray(
            field[None],
            dims=("time", "y", "x"),
            coords={"time": [day], **coarse.coords},
            name="lst",
            attrs={"units": "K", "long_name": "land surface temperature"},
        )
        da = ds.grid.set_crs(da, "EPSG:32632")
        da.to_dataset().to_netcdf(folder / f"lst_{t:02d}.nc")
        # STATIONS a day at random pixels: the coarse value of their cell plus 0.5 K of noise.
        rows, cols = rng.integers(0, n_fine, STATIONS), rng.integers(0, n_fine, STATIONS)
        stations.append(
            pd.DataFrame(
                {
                    "time": str(day)[:10],
                    "x": x_fine[cols],
                    "y": y_fine[rows],
                    "value": field[rows // FACTOR, cols // FACTOR] + rng.normal(0, 0.5, STATIONS),
                }
            )
        )
    pd.concat(stations).to_csv(folder / "stations.csv", index=False)
    return stack_path


#: The dask set-ups compared: one thread (synchronous), two threads of the local scheduler, and a
#: LocalCluster of two in-process workers (what a cluster run looks like, with its scheduling overhead).
SETUPS = {
    "1 thread": {"threads": 1},
    "2 threads": {"threads": 2},
    "LocalCluster 2x1": {"threads": 1, "workers": 2, "processes": False},
}


def write_config(folder, setup, tile, calibrate=False):
    import yaml

    config = {
        "inputs": {"files": "lst_*.nc", "variable": "lst"},
        "covariates": {"stack": "covariates.nc"},
        "model": {"parameters": {"trend": "linear", "calibrate_std": False}},
        "outputs": {
            "directory": "out_" + setup.replace(" ", "_") + ("_calibrated" if calibrate else ""),
            "variables": ["mean", "std"],
            "tile": tile,
            "compression": 1,
        },
        "dask": SETUPS[setup],
    }
    if calibrate:  # the std calibrated at each day's stations instead of left as it is
        config["model"]["parameters"] = {"trend": "linear"}
        config["calibration"] = {"stations": "stations.csv", "crs": "EPSG:32632", "noise": 0.5}
    path = Path(folder) / ("run_" + setup.replace(" ", "_") + ("_calibrated" if calibrate else "") + ".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def child(config_path):
    """Run one configuration; print seconds, pixels and peak memory as JSON."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    from downscale.run import load_config, run

    config = load_config(config_path)
    start = time.perf_counter()
    results = run(config)
    seconds = time.perf_counter() - start
    failed = [r.message for r in results if r.status == "failed"]
    import xarray as xr

    with xr.open_dataset(results[0].item.output) as data:
        pixels = data.sizes["y"] * data.sizes["x"] * len(results)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB -> MB on Linux
    # ru_maxrss can carry the parent's peak over fork + exec; VmHWM is this process's own high-water mark.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = float(line.split()[1]) / 1024.0
    except OSError:
        pass
    print(json.dumps({"seconds": seconds, "pixels": pixels, "peak_mb": peak, "failed": failed}))


def make_inputs_elsewhere(folder, n_coarse, n_times):
    """Make the inputs in a subprocess, so this process stays small for the children it starts."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_run; "
    code += f"bench_run.make_inputs({str(folder)!r}, {n_coarse}, {n_times})"
    subprocess.run([sys.executable, "-c", code], check=True)


def measure(folder, setup, tile, calibrate=False):
    config = write_config(folder, setup, tile, calibrate)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(config)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="40 x 40 coarse cells and 3 steps")
    parser.add_argument("--tile", type=int, default=20, help="tile side in coarse cells (default 20)")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    n_coarse, n_times, big_times = (40, 3, 2) if args.quick else (100, 10, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        make_inputs_elsewhere(base, n_coarse, n_times)
        for setup in SETUPS:
            rows.append(
                (
                    f"{n_coarse}x{n_coarse} -> {n_coarse * FACTOR}^2, {n_times} steps",
                    setup,
                    measure(base, setup, args.tile),
                )
            )
        rows.append(
            (
                f"{n_coarse}x{n_coarse} -> {n_coarse * FACTOR}^2, {n_times} steps",
                f"1 thread, std at {STATIONS} stations",
                measure(base, "1 thread", args.tile, calibrate=True),
            )
        )
        big = Path(tmp) / "big"
        make_inputs_elsewhere(big, 2 * n_coarse, big_times)
        name = f"{2 * n_coarse}x{2 * n_coarse} -> {2 * n_coarse * FACTOR}^2 (4x area), {big_times} steps"
        rows.append((name, "1 thread", measure(big, "1 thread", args.tile)))
    print(
        f"\ndownscale run benchmark (factor {FACTOR}, tile {args.tile} coarse cells, trend linear + ATPK, mean + std)"
    )
    print(f"{'domain':<48} {'dask':>30} {'seconds':>8} {'Mpixel/s':>9} {'peak MB':>8}")
    for name, setup, r in rows:
        rate = r["pixels"] / r["seconds"] / 1e6
        print(
            f"{name:<48} {setup:>30} {r['seconds']:>8.1f} {rate:>9.3f} {r['peak_mb']:>8.0f}"
            + (f"  FAILED: {r['failed']}" if r["failed"] else "")
        )
    base_peak, big_peak = rows[0][2]["peak_mb"], rows[-1][2]["peak_mb"]
    print(f"\npeak memory, 4x area / 1x area (1 worker): {big_peak / base_peak:.2f}  (target <= 1.0 + noise)")
    print(f"peak memory under 2 GB: {'yes' if max(r[2]['peak_mb'] for r in rows) < 2048 else 'NO'}")
    print(f"speed-up with 2 threads: {rows[0][2]['seconds'] / rows[1][2]['seconds']:.2f}x")
    calibrated = rows[3][2]
    print(
        f"std calibrated at {STATIONS} stations a day / uncalibrated (1 thread): time "
        f"{calibrated['seconds'] / rows[0][2]['seconds']:.2f}x, peak memory "
        f"{calibrated['peak_mb'] / rows[0][2]['peak_mb']:.2f}x (the tiles holding a station are kept for the writer)"
    )
    print(
        f"speed-up with a LocalCluster of 2 workers: {rows[0][2]['seconds'] / rows[2][2]['seconds']:.2f}x "
        f"(in-process workers share the GIL and every tile goes through the distributed scheduler)"
    )


if __name__ == "__main__":
    main()
