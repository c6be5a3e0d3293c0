"""Regenerate the small example of ``downscale run`` in data/example/ (run: ``python data/make_example.py``).

Six daily coarse land surface temperature files (12 x 12 cells of 10 km,
netCDF), the 1 km DEM, NDVI and land mask as GeoTIFF (120 x 120), and
stations as CSV, all from :func:`downscale.datasets.synthetic_scene` with a
fixed seed, so the files are the same on every machine. The run configuration
that uses them is data/example.yaml::

    downscale run data/example.yaml

Everything together is well under 1 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "example"


def make_example(folder=EXAMPLE, seed: int = 0):
    """Write the example files into ``folder`` and return their paths."""
    import downscale as ds

    folder = Path(folder)
    (folder / "coarse").mkdir(parents=True, exist_ok=True)
    scene = ds.datasets.synthetic_scene("lst", seed=seed, n_times=6, shape=(120, 120), factor=10)
    written = []
    for t in range(scene.coarse.sizes["time"]):
        step = scene.coarse.isel(time=slice(t, t + 1)).astype(np.float32)
        step["time"] = step["time"].astype("datetime64[ns]")
        day = np.datetime_as_string(step["time"].values[0], unit="D").replace("-", "")
        path = folder / "coarse" / f"lst_{day}.nc"
        encoding = {"lst": {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)}}
        step.to_dataset(name="lst").to_netcdf(path, encoding=encoding)
        written.append(path)
    rasters = {
        "dem.tif": scene.dem.astype(np.float32),
        "ndvi.tif": scene.ndvi.astype(np.float32),
        "land.tif": scene.mask.astype(np.uint8),
    }
    for name, raster in rasters.items():
        raster = raster.drop_vars([c for c in raster.coords if c not in ("y", "x", "spatial_ref")])
        raster.attrs = {k: v for k, v in raster.attrs.items() if k != "grid_mapping"}
        raster.rio.to_raster(folder / name, compress="deflate")
        written.append(folder / name)
    stations = scene.stations.copy()
    stations["x"] = stations.geometry.x.round(1)
    stations["y"] = stations.geometry.y.round(1)
    stations["value"] = stations["value"].round(3)
    table = stations[["station_id", "time", "x", "y", "value"]]
    path = folder / "stations.csv"
    table.to_csv(path, index=False)
    written.append(path)
    return written


if __name__ == "__main__":
    for path in make_example():
        print(f"{path.relative_to(HERE.parent)}  {path.stat().st_size / 1024:.1f} kB")
