# %% [markdown]
# # 01 · Quickstart: land surface temperature from 25 km to 1 km
#
# A satellite gives land surface temperature (LST) on a 25 km grid; you want it at 1 km.
# `downscale` does it in three steps:
#
# 1. **covariates**: fine-scale fields that explain sub-cell variation (terrain, NDVI, location);
# 2. **a trend model** fitted on the coarse cells (LightGBM here) and applied to the fine pixels;
# 3. **area-to-point kriging (ATPK)** of what the trend misses, so that the fine field averages back
#    *exactly* to the coarse input (coherence).
#
# We use a synthetic scene whose fine truth is known, so every claim below can be checked.
# It runs in well under a minute.

# %%
import numpy as np
import pandas as pd

import downscale as ds

scene = ds.datasets.synthetic_scene("lst", seed=0)          # 400 x 400 km, 1 km pixels, factor 25
X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, land=scene.mask)
model = ds.Downscaler(trend="lightgbm", residual="atpk")
model.fit(scene.coarse, X, mask=scene.mask)                   # LST only exists over land
fine, std = model.predict(X, return_std=True)
scores = ds.validation.station_scores(fine, scene.stations, coarse=scene.coarse)
scene

# %% [markdown]
# That was the whole method. The rest of this notebook looks at what came out.
#
# ## The inputs
#
# The coarse field has 16 x 16 cells; the covariates are on the 400 x 400 fine grid.
# `build` returns one `xarray.Dataset`, every variable with units and a long name:

# %%
print(scene.coarse.sizes, "->", dict(X.sizes))
for name in list(X.data_vars)[:8]:
    print(f"{name:18s} {X[name].attrs.get('long_name', '')} [{X[name].attrs.get('units', '')}]")
print("...", len(X.data_vars), "covariates in all")

# %% [markdown]
# ## Maps: coarse, downscaled, truth and uncertainty
#
# `ds.plot.plot_maps` draws each field with axes in km and a colour bar with the variable's name and
# units. The first three panels share one colour range; black dots are the stations.

# %%
fig = ds.plot.plot_maps(
    {"coarse (25 km)": scene.coarse, "downscaled (1 km)": fine, "truth (1 km)": scene.truth, "standard deviation": std},
    share=["coarse (25 km)", "downscaled (1 km)", "truth (1 km)"],
    cmap={"coarse (25 km)": "inferno", "downscaled (1 km)": "inferno", "truth (1 km)": "inferno", "standard deviation": "Greys"},
    stations=scene.stations,
)

# %% [markdown]
# The downscaled map shows the valleys, ridges and vegetation that the 25 km cells average away.
#
# The standard deviation is nearly uniform here (about 0.7 K): most of it is the trend's error,
# which the model estimates once per scene by spatial cross-validation. The faint checkerboard is the
# kriging variance, smallest near the centre of each 25 km cell. The dark pixels along the west coast
# are land pixels whose coarse cell is mostly sea and has no value (NaN): there the kriging has no
# data of its own, and the uncertainty is largest.
#
# ## Coherence: the fine field averages back to the coarse one
#
# Averaging the 1 km result over each 25 x 25 block gives the coarse input back, to float precision.
# A bilinear interpolation does not have this property.

# %%
back = ds.grid.block_mean(fine, scene.factor)
bilinear = ds.grid.upsample(scene.coarse, scene.factor, "bilinear").where(scene.mask)
print("largest |block mean - coarse|, downscaled:", float(abs(back - scene.coarse).max()), "K")
print("largest |block mean - coarse|, bilinear:  ",
      float(abs(ds.grid.block_mean(bilinear, scene.factor) - scene.coarse).max()), "K")

# %% [markdown]
# ## Station scores
#
# Forty stations measure LST at points (with 0.5 K of point-scale noise). `station_scores` samples the
# prediction at each station and gives one row per station and an `overall` row with bootstrap
# confidence intervals (`_low`, `_high`: 90 %). We score the bilinear interpolation of the coarse
# field the same way: it is the baseline any downscaling must beat.

# %%
bilinear_scores = ds.validation.station_scores(bilinear, scene.stations, coarse=scene.coarse)
columns = ["n", "rmse", "rmse_low", "rmse_high", "bias", "r", "kge"]
pd.DataFrame(
    {"downscaled": scores.loc["overall", columns], "bilinear": bilinear_scores.loc["overall", columns]}
).T.round(3)

# %%
observed = scene.stations["value"].to_numpy()
fig = ds.plot.plot_station_scatter(
    observed,
    {
        "downscaled": ds.validation.extract_at_points(fine, scene.stations),
        "bilinear": ds.validation.extract_at_points(bilinear, scene.stations),
    },
    units="K",
    title="LST at 40 stations",
)

# %% [markdown]
# And against the full fine truth, which real life never gives you:

# %%
def rmse(field):
    return float(np.sqrt(((field - scene.truth) ** 2).mean()))

print(f"RMSE against the 1 km truth: downscaled {rmse(fine):.2f} K, bilinear {rmse(bilinear):.2f} K")
inside = abs(fine - scene.truth) <= 1.6449 * std
print(f"share of land pixels inside the nominal 90 % interval: {float(inside.where(scene.mask).mean()):.2f}")

# %% [markdown]
# On this scene the downscaled field is closer to the truth than bilinear interpolation, both at the
# stations and everywhere, and its nominal 90 % intervals are, if anything, slightly too wide. The confidence intervals of the station RMSE are wide with 40 stations;
# tutorial 06 shows how to read them.
#
# ## What could go wrong?
#
# Each cell below makes a mistake on purpose and prints the error `downscale` raises.
#
# **The coarse grid and the covariates do not nest.** Every coarse cell must be a whole block of fine
# pixels. A coarse field cut to a different extent (or on another grid) is refused; bring it onto a
# nested grid with `downscale.align.to_nested` first.

# %%
try:
    ds.Downscaler().fit(scene.coarse.isel(x=slice(1, None)), X.isel(x=slice(0, 380)))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **A covariate has holes where the target has data.** The trend cannot be evaluated there. Fill the gaps
# (`downscale.covariates.fill_gaps`) or pass a `mask` that excludes those pixels.

# %%
holey = X.copy()
holey["elevation"] = X["elevation"].where(X["northing"] < X["northing"].max() - 50_000)
try:
    ds.Downscaler().fit(scene.coarse, holey, mask=scene.mask)
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **Predicting with other covariates than the ones used in fit.** Build `X` once and use it for both.

# %%
try:
    model.predict(X.drop_vars("ndvi"))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **Stations without a coordinate reference system.** A CSV of x/y columns does not say which CRS they are
# in; declare it (`read_stations(path, crs="EPSG:32632")`) rather than let the package guess.

# %%
no_crs = scene.stations.copy()
no_crs = no_crs.set_crs(None, allow_override=True)
try:
    ds.validation.station_scores(fine, no_crs)
except ValueError as error:
    print("ValueError:", error)
