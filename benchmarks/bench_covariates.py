"""Benchmark: all DEM features of downscale.covariates against xarray-spatial's slope + aspect + curvature.

Run ``python benchmarks/bench_covariates.py [size]`` (default 5000, i.e. a 5000 x 5000 DEM).
Each step runs in a fresh subprocess so that its peak memory (ru_maxrss) is its own;
the compiled kernels are warmed up on a small DEM first (numba compiles once, then
loads from its on-disk cache), so the timings are steady-state. Prints one table with
time, peak memory and the ratio to xarray-spatial's three features.

The aim (issue 3): all features in less than 3x the time xarray-spatial needs for its three.
"""

from __future__ import annotations

import json
import subprocess
import sys

SETUP = """
import json, resource, time
import numpy as np, xarray as xr
import downscale as ds

def make_dem(n, seed=0):
    # Real-looking relief: a fractal (power-law spectrum) surface, 250 m cells, UTM.
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf
    spectrum = k ** -1.6 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    z = np.fft.irfft2(spectrum, s=(n, n))
    z = 1500.0 + 600.0 * (z - z.mean()) / z.std()
    g = ds.grid.make_grid((n, n), 250.0, origin=(300_000.0, 5_000_000.0), crs="EPSG:32632")
    da = xr.DataArray(z, dims=("y", "x"), coords=g.coords, name="elevation", attrs={"units": "m"})
    return ds.grid.set_crs(da, "EPSG:32632")
"""

STEPS = {
    "xarray-spatial slope+aspect+curvature": """
import xrspatial
small = make_dem(64)
for f in (xrspatial.slope, xrspatial.aspect, xrspatial.curvature):
    f(small)
dem = make_dem(N)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = [xrspatial.slope(dem), xrspatial.aspect(dem), xrspatial.curvature(dem)]
elapsed = time.perf_counter() - start
n_features = 3
""",
    "downscale all DEM features": """
from downscale.covariates import dem as terrain
terrain.dem_features(make_dem(64), tpi_radii=(1000.0, 5000.0, 15000.0))
dem = make_dem(N)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = terrain.dem_features(dem, tpi_radii=(1000.0, 5000.0, 15000.0))
elapsed = time.perf_counter() - start
n_features = len(out.data_vars)
""",
    "downscale slope+northness/eastness+curvature": """
from downscale.covariates import dem as terrain
features = ["slope", "northness", "eastness", "profile_curvature", "plan_curvature"]
terrain.dem_features(make_dem(64), features=features)
dem = make_dem(N)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = terrain.dem_features(dem, features=features)
elapsed = time.perf_counter() - start
n_features = len(out.data_vars)
""",
    "downscale all DEM features but TWI": """
from downscale.covariates import dem as terrain
features = list(terrain.DEFAULT_FEATURES)
features.remove("twi")
terrain.dem_features(make_dem(64), features=features)
dem = make_dem(N)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = terrain.dem_features(dem, features=features)
elapsed = time.perf_counter() - start
n_features = len(out.data_vars)
""",
}

REPORT = """
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "peak_mib": peak / 1024, "input_mib": before / 1024,
                  "n_features": n_features}))
"""


def run(step: str, size: int) -> dict:
    code = SETUP + f"\nN = {size}\n" + STEPS[step] + REPORT
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    size = int(argv[0]) if argv else 5000
    print(f"DEM of {size} x {size} cells (250 m, UTM), float64; best of 2 runs per step")
    results = {}
    for step in STEPS:
        runs = [run(step, size) for _ in range(2)]
        results[step] = min(runs, key=lambda r: r["seconds"])
    reference = results["xarray-spatial slope+aspect+curvature"]["seconds"]
    print(f"{'step':48s} {'features':>8s} {'time (s)':>9s} {'peak MiB':>9s} {'time ratio':>11s}")
    for step, r in results.items():
        print(
            f"{step:48s} {r['n_features']:8d} {r['seconds']:9.2f} {r['peak_mib']:9.0f} "
            f"{r['seconds'] / reference:10.2f}x"
        )
    ratio = results["downscale all DEM features"]["seconds"] / reference
    print(f"\nall DEM features / xarray-spatial's three: {ratio:.2f}x (aim: < 3x)")


if __name__ == "__main__":
    main()
