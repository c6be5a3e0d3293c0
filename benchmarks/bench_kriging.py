"""Benchmark: regular-grid ATPK against PyKrige (C backend, moving neighbourhood) and a 5 x 5 convolution.

Run: ``python benchmarks/bench_kriging.py`` (about 20 s; times are the best of 3 runs (5 for the apply step); add ``--quick`` to skip PyKrige).

Cases
-----
1. 40 x 40 coarse cells (25 km) -> 1000 x 1000 fine cells (1 km), factor 25, 5 x 5 neighbourhood.
   Peer: ``pykrige.ok.OrdinaryKriging(...).execute("points", ..., backend="C", n_closest_points=25)``
   on the same 1 M fine-cell centres (point kriging of the coarse centres: PyKrige has no ATPK).
   Reference for the application step: ``scipy.ndimage.convolve`` with a 5 x 5 kernel on the
   1000 x 1000 result.
2. 100 x 100 coarse -> 2500 x 2500 fine (6.25 M cells): time and peak memory.

Peak memory is the peak of memory allocations traced by ``tracemalloc`` (NumPy registers its
buffers there) during each step, above what was allocated before it.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np
import xarray as xr
from scipy import ndimage

import downscale as ds
from downscale.kriging import ATPK, VariogramModel
from downscale.kriging.atpk import _predict_stack


def field(n, seed=0):
    rng = np.random.default_rng(seed)
    grid = ds.grid.make_grid((n, n), 25_000.0, crs="EPSG:32632")
    values = ndimage.gaussian_filter(rng.normal(size=(n, n)), 2.0) * 10
    values[5, 7] = np.nan  # a hole, so edge and hole patterns are exercised
    return xr.DataArray(values, dims=("y", "x"), coords=grid.coords, name="residual")


def measure(function, repeat=1):
    """(best seconds, peak MB of traced allocations, result)."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    tracemalloc.reset_peak()
    function()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return best, peak, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip PyKrige (about 8 s)")
    args = parser.parse_args(argv)
    model = VariogramModel("exponential", sill=4.0, range=200_000.0)
    rows = []

    # ---- case 1: 40 x 40 -> 1000 x 1000
    coarse = field(40)
    factor = 25
    plan_and_apply = measure(
        lambda: ATPK(variogram=model).fit(coarse).predict(factor, return_variance=True), repeat=3
    )
    fitted = ATPK(variogram=model).fit(coarse)
    fitted.predict(factor)  # builds and caches the weights
    plan = fitted._plan(factor)
    stack = coarse.values[None]
    apply_only = measure(lambda: _predict_stack(plan, stack, 0, sill=4.0, return_variance=False), repeat=5)
    full_fit = measure(
        lambda: ATPK(variogram="exponential").fit(coarse).predict(factor, return_variance=True)
    )
    image = plan_and_apply[2][0].fillna(0).values
    convolve = measure(lambda: ndimage.convolve(image, np.full((5, 5), 1 / 25)), repeat=5)
    rows.append(("ATPK plan + apply (given variogram, + variance)", *plan_and_apply[:2]))
    rows.append(("ATPK variogram fit + deconvolution + plan + apply", *full_fit[:2]))
    rows.append(("ATPK apply step (cached weights)", *apply_only[:2]))
    rows.append(("scipy.ndimage.convolve 5x5 on 1000x1000", *convolve[:2]))
    pykrige = None
    if not args.quick:
        from pykrige.ok import OrdinaryKriging

        fine = ds.grid.fine_grid(coarse, factor)
        fx, fy = np.meshgrid(fine.x.values, fine.y.values)
        cx, cy = np.meshgrid(coarse.x.values, coarse.y.values)
        ok_mask = np.isfinite(coarse.values)
        ok = OrdinaryKriging(
            cx[ok_mask],
            cy[ok_mask],
            coarse.values[ok_mask],
            variogram_model="exponential",
            variogram_parameters=model.to_pykrige(),
        )
        start = time.perf_counter()
        tracemalloc.start()
        ok.execute("points", fx.ravel(), fy.ravel(), backend="C", n_closest_points=25)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        pykrige = time.perf_counter() - start
        rows.append(("PyKrige OK backend='C', n_closest_points=25", pykrige, peak))

    # ---- case 2: 100 x 100 -> 2500 x 2500
    big = field(100, seed=1)
    big_run = measure(lambda: ATPK(variogram=model).fit(big).predict(factor, return_variance=True))
    rows.append(("ATPK 100x100 -> 2500x2500 plan + apply (+ variance)", *big_run[:2]))

    print(f"downscale ATPK benchmark ({os.cpu_count()} CPU cores)")
    print()
    print(f"{'step':58s} {'time (s)':>10s} {'peak MB':>9s}")
    for name, seconds, peak in rows:
        print(f"{name:58s} {seconds:10.4f} {peak:9.1f}")
    print()
    print("ratios (40 x 40 -> 1000 x 1000, factor 25)")
    if pykrige is not None:
        print(
            f"  PyKrige time / ATPK plan + apply time      : {pykrige / plan_and_apply[0]:8.1f} x (aim >= 100)"
        )
    print(f"  ATPK apply time / 5x5 convolution time      : {apply_only[0] / convolve[0]:8.2f} x (aim <= 10)")
    print(f"  2500 x 2500 peak memory                     : {big_run[1]:8.0f} MB (aim < 1024)")
    block = ds.grid.block_mean(plan_and_apply[2][0], factor)
    valid = np.isfinite(coarse.values)
    error = np.max(np.abs(block.values[valid] - coarse.values[valid]) / np.abs(coarse.values[valid]).max())
    print(f"  coherence, max relative error               : {error:8.1e}")


if __name__ == "__main__":
    main()
