# %% [markdown]
# # 04 · NO2: hot spots, plumes, and covariates that do not explain them
#
# A tropospheric NO2 column from a satellite (TROPOMI-like, here on a 10 km grid) is a low background
# with a few **hot spots**: cities, power plants, and the **plumes** the wind stretches downwind of them.
# The field is strongly skewed, and what causes the hot spots (emissions) is not in the usual
# fine-scale covariates. Terrain only explains a small part: the column thins with altitude.
#
# This notebook shows:
#
# 1. why NO2 is downscaled in **log space** (`transform="log1p"`, the default for a variable bounded below by 0);
# 2. what a terrain trend does to hot spots that terrain does not explain;
# 3. what the **area of applicability** (AOA) of the trend says, and what it cannot say;
# 4. what an **emission inventory**, the covariate that does carry the hot spots, is worth, and at which scale.
#
# The synthetic scenes keep the fine truth. It runs in about half a minute.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import downscale as ds

scene = ds.datasets.synthetic_scene("no2", seed=1, shape=(200, 200), factor=10)
truth = scene.truth
print(scene)
values = truth.values.ravel()
print(f"median {np.median(values):.1f}, 99th percentile {np.percentile(values, 99):.1f}, "
      f"maximum {values.max():.1f} {truth.attrs['units']}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].hist(values, bins=80, color="tab:brown")
axes[0].set_xlabel("NO2 column [umol m-2]")
axes[0].set_ylabel("number of 1 km pixels")
axes[0].set_yscale("log")
axes[0].set_title("Fine truth: a background and a long tail")
axes[1].hist(np.log1p(values), bins=80, color="tab:green")
axes[1].set_xlabel("log(1 + NO2 column) [log umol m-2]")
axes[1].set_ylabel("number of 1 km pixels")
axes[1].set_title("After the log1p transform")
fig.tight_layout()

# %% [markdown]
# One per cent of the pixels carry columns ten times the median. A trend fitted on raw values spends
# its effort on those few cells; in log space a plume is a bump of similar size to the rest of the
# field's variation, and a multiplicative effect (the altitude attenuation `exp(-z / 1.5 km)`) becomes
# additive, which a linear trend can fit.
#
# ## Covariates and methods
#
# Terrain only: elevation and slope. The scene has an emission inventory too, but we leave it out
# until the last section: first the situation where the covariates do not explain the field's fine
# structure.
#
# - **linear, log1p**: a linear trend in log space plus ATPK of the residuals (coherent);
# - **linear, no transform**: the same in raw units;
# - **LightGBM, log1p**: a flexible trend in log space plus ATPK, its boosting rounds chosen by spatial
#   cross-validation on the coarse cells (early stopping, the default);
# - **LightGBM, log1p, 300 rounds**: the same trees without early stopping (`early_stopping=False`);
# - **ATPK only**: no covariates, coherent kriging of the log field;
# - **bilinear**: interpolation of the coarse field (not coherent).
#
# The trend is passed explicitly: the story needs these particular models.

# %%
X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"], location=False)
methods = {
    "linear, log1p": ds.Downscaler(trend="linear", transform="log1p", calibrate_std=False),
    "linear, no transform": ds.Downscaler(trend="linear", transform="none", calibrate_std=False),
    "LightGBM, log1p": ds.Downscaler(trend="lightgbm", transform="log1p", calibrate_std=False),
    "LightGBM, log1p, 300 rounds": ds.Downscaler(trend="lightgbm", transform="log1p", early_stopping=False,
                                                 calibrate_std=False),
    "ATPK only": ds.Downscaler(trend="none", transform="log1p", calibrate_std=False),
}
predictions = {name: model.fit(scene.coarse, X).predict(X) for name, model in methods.items()}
predictions["bilinear"] = ds.grid.upsample(scene.coarse, scene.factor, "bilinear")

hot = truth > np.percentile(values, 99)          # the hot-spot pixels of the truth


def scores(field):
    error = field - truth
    return {
        "rmse": float(np.sqrt((error**2).mean())),
        "rmse over hot spots": float(np.sqrt((error**2).where(hot).mean())),
        "rmse of log": float(np.sqrt(((np.log(field.clip(min=1e-3)) - np.log(truth)) ** 2).mean())),
        "minimum": float(field.min()),
        "maximum": float(field.max()),
        "max |block mean - coarse|": float(abs(ds.grid.block_mean(field, scene.factor) - scene.coarse).max()),
    }

table = pd.DataFrame({name: scores(field) for name, field in predictions.items()}).T
table.loc["truth", ["minimum", "maximum"]] = float(truth.min()), float(truth.max())
print("units: umol m-2, except 'rmse of log' (natural log)")
table.round(2)

# %% [markdown]
# Three things stand out.
#
# - **The log transform matters.** The same linear trend is clearly better in log space (lower RMSE,
#   much lower RMSE over the hot spots, and a log error nearly four times smaller). In raw units the coherent
#   correction has to pull the background down to 0 in some pixels (minimum 0.0) to make room for the
#   peaks; the truth never goes below about 1.5.
# - **A flexible trend invents hot spots.** LightGBM with its 300 rounds, even in log space, is worse
#   than bilinear interpolation and puts a maximum well above the truth's. At 10 km the hot cells happen
#   to sit on some particular mix of elevation and slope (emissions are in the lowlands); the trees
#   learn that coincidence and, at 1 km, light up every pixel with the same terrain. Early stopping
#   (the default) sees on held-out coarse blocks that most of those rounds do not generalise and keeps
#   about twenty: better than bilinear, still behind ATPK only, and still a few invented peaks.
# - **The simple methods win.** Linear (log) and ATPK only are close: the terrain adds the altitude
#   attenuation, little more. Every coherent method keeps the block means exactly.
#
# ## Hot spots and plumes on the map
#
# The colour scale is logarithmic (log10 of the column) so that background and plumes are both visible.

# %%
def log10(field):
    out = np.log10(field.clip(min=0.1))
    out.attrs = {"long_name": "log10 NO2 column", "units": "log10 umol m-2"}
    return out

panels = {"coarse (10 km)": scene.coarse, "truth (1 km)": truth, "bilinear": predictions["bilinear"],
          "linear, log1p": predictions["linear, log1p"], "LightGBM, log1p": predictions["LightGBM, log1p"],
          "elevation": X["elevation"]}
fig = ds.plot.plot_maps(
    {name: (field if name == "elevation" else log10(field)) for name, field in panels.items()},
    share=[name for name in panels if name != "elevation"],
    cmap={**{name: "magma" for name in panels}, "elevation": "terrain"},
    ncols=3, figsize_per_panel=3.6,
)

# %% [markdown]
# A transect across the strongest hot spot shows the plume's shape, row by row of the fine grid:

# %%
row, column = np.unravel_index(int(np.argmax(truth.values)), truth.shape)
fig, ax = plt.subplots(figsize=(9, 3.6))
distance = truth.x.values / 1000.0
for name, style in [("truth", "k-"), ("bilinear", "C0--"), ("linear, log1p", "C1-"), ("LightGBM, log1p", "C3-"),
                    ("ATPK only", "C2:")]:
    field = truth if name == "truth" else predictions[name]
    ax.plot(distance, field.isel(y=row).values, style, label=name, linewidth=1.4)
ax.plot(distance, ds.grid.upsample(scene.coarse, scene.factor, "nearest").isel(y=row).values, color="grey",
        drawstyle="steps-mid", alpha=0.6, label="coarse cells")
ax.set_xlabel("easting [km]")
ax.set_ylabel("NO2 column [umol m-2]")
ax.set_title(f"West-east transect through the strongest hot spot (northing {float(truth.y[row]) / 1000:.0f} km)")
ax.legend(fontsize=8, ncol=3)
fig.tight_layout()

# %% [markdown]
# Inside its coarse cell, a hot spot a few kilometres wide can only be placed by something that knows
# where it is. The coarse cell says *how much* NO2 there is; the kriging of the residuals spreads it
# smoothly over the cell and its neighbours, so peaks come out lower and wider than in the truth. No
# terrain covariate can do better, because the emissions are not in the terrain.
#
# ## Area of applicability: where may the trend be used?
#
# `ds.explain.applicability` computes the dissimilarity index of Meyer and Pebesma (2021): for every
# fine pixel, the distance in covariate space (weighted by each covariate's SHAP importance) to the
# nearest coarse training cell, relative to what spatial cross-validation sees among the training
# cells. Pixels above the threshold are **outside the AOA**: the trend extrapolates there.
#
# We compute it for the LightGBM trend with its 300 rounds, the one that misbehaved.

# %%
dissimilarity, inside, threshold = ds.explain.applicability(methods["LightGBM, log1p, 300 rounds"], X)
print(f"threshold {threshold:.3f}; {float(inside.mean()):.0%} of the fine pixels are inside the AOA")
fig = ds.plot.plot_aoa(dissimilarity, inside, title="AOA of the LightGBM trend (grey: outside)")

# %%
error = abs(predictions["LightGBM, log1p, 300 rounds"] - truth)
error.attrs = {"long_name": "|LightGBM - truth|", "units": "umol m-2"}
aoa_map = inside.astype(float).assign_attrs(long_name="inside the AOA (1) or not (0)", units="1")
fig = ds.plot.plot_maps({"absolute error, LightGBM": error, "area of applicability": aoa_map},
                        cmap={"absolute error, LightGBM": "Reds", "area of applicability": "RdYlGn"}, figsize_per_panel=3.8)
pd.DataFrame({
    "share of pixels": [float(inside.mean()), float(1 - inside.mean())],
    "mean |error| [umol m-2]": [float(error.where(inside).mean()), float(error.where(~inside).mean())],
    "share of the hot-spot pixels": [float(inside.where(hot).mean()), float((~inside).where(hot).mean())],
}, index=["inside the AOA", "outside the AOA"]).round(3)

# %% [markdown]
# About a third of the pixels are outside the AOA, in threads along ridges and valleys: combinations
# of elevation and slope that no 10 km cell has, since averaging smooths the extremes away (about a
# quarter of them are steeper than the steepest 10 km average). The trend extrapolates there. That
# is useful to know and it is what the AOA is for: **covariate values the training cells do not cover**.
#
# But the errors are hardly larger outside than inside, and most hot-spot pixels, where the errors are
# largest (left map: the plumes), are *inside* the AOA (right map: no trace of the plumes). The AOA
# answers "has the trend seen covariates like these?", not
# "do these covariates explain the field?". A hot spot in the lowlands has ordinary terrain; the
# trend has seen plenty of lowland cells, and is confidently wrong there. When the driver of the fine
# structure is missing from the covariates, no covariate-space check can find it. Only other evidence
# can: stations (tutorial 06), the Wald protocol (tutorial 02), or a covariate that carries the driver
# (an emission inventory, road density, night lights).
#
# ## With an emission inventory
#
# The scene comes with the covariate a NO2 study would add: an **emission inventory**
# (`scene.extra["emissions"]`), a static map of the emitters. Like a real one it has errors: each
# emitter's strength is off by about 30 %, it is spread over 3 km (an inventory maps a city or a
# plant site, not a stack), and 15 minor entries have no counterpart in the truth. It knows where the
# emitters are, not where today's wind blows their plumes.
#
# NO2 is modelled in log space, where an emitter adds a bump of roughly the log of its strength, so
# the covariate is the log of the inventory (trees do not care; a linear trend does).

# %%
inventory = scene.extra["emissions"]
X_inventory = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"],
                                  extra={"log_emissions": np.log1p(inventory).assign_attrs(units="log(t km-2 yr-1)")})
with_inventory = {
    "linear + inventory": ds.Downscaler(trend="linear", calibrate_std=False),
    "LightGBM + inventory": ds.Downscaler(trend="lightgbm", calibrate_std=False),
    "default + inventory": ds.Downscaler(calibrate_std=False),
}
for name, model in with_inventory.items():
    predictions[name] = model.fit(scene.coarse, X_inventory).predict(X_inventory)
print("the default chose:", with_inventory["default + inventory"].selected_trend_)
rows = ["ATPK only", "LightGBM, log1p", "linear + inventory", "LightGBM + inventory", "default + inventory", "bilinear"]
at_stations = {name: float(ds.validation.station_scores(predictions[name], scene.stations, ci=False).loc["overall", "rmse"])
               for name in rows}
table_inventory = pd.DataFrame({name: scores(predictions[name]) for name in rows}).T
table_inventory["rmse at the 40 stations"] = pd.Series(at_stations)
table_inventory.drop(columns=["minimum", "max |block mean - coarse|"]).round(2)

# %% [markdown]
# On this 10 km scene the inventory does **not** help: ATPK of the field alone stays the best. A
# 10 km cell is small next to a plume (40 km long), so the coarse field already says where the hot
# spots are; the kriging spreads each cell's excess over the right neighbourhood. A trend on the
# inventory adds its errors: spurious minor entries, wrong strengths, and peaks sharper at 1 km than
# in any 10 km cell the trend was fitted on. The default picks its trend on the coarse cells, where
# the inventory does explain the field (it chose the linear trend); it cannot see that the relation
# breaks at 1 km. The stations can: they rank every inventory trend behind ATPK alone, as the truth
# does (they rate bilinear as well as ATPK: most stations sit in the background, away from the hot
# spots). Held-out stations are the check to make before trusting a covariate.
#
# At 25 km (the default scene size, 16 x 16 coarse cells, as `downscale demo --variable no2`), a cell
# holds a whole plume, and the kriging can no longer place it:

# %%
scene25 = ds.datasets.synthetic_scene("no2", seed=0)
X25 = ds.covariates.build(dem=scene25.dem, ndvi=scene25.ndvi, location=True)
X25_inventory = ds.covariates.build(dem=scene25.dem, ndvi=scene25.ndvi, location=True, extra=scene25.extra)
runs25 = {
    "ATPK only": (ds.Downscaler(trend="none", calibrate_std=False), X25),
    "LightGBM, no inventory": (ds.Downscaler(trend="lightgbm", calibrate_std=False), X25),
    "LightGBM + inventory": (ds.Downscaler(trend="lightgbm", calibrate_std=False), X25_inventory),
    "default + inventory": (ds.Downscaler(calibrate_std=False), X25_inventory),
}
predictions25 = {name: model.fit(scene25.coarse, X).predict(X) for name, (model, X) in runs25.items()}
predictions25["bilinear"] = ds.grid.upsample(scene25.coarse, scene25.factor, "bilinear")
print("the default chose:", runs25["default + inventory"][0].selected_trend_)
rmse25 = {name: float(np.sqrt(((field - scene25.truth) ** 2).mean())) for name, field in predictions25.items()}
pd.DataFrame({"rmse [umol m-2]": rmse25,
              "rmse / bilinear": {name: value / rmse25["bilinear"] for name, value in rmse25.items()}}).round(3)

# %%
panels25 = {"coarse (25 km)": scene25.coarse, "truth (1 km)": scene25.truth, "ATPK only": predictions25["ATPK only"],
            "LightGBM + inventory": predictions25["LightGBM + inventory"]}
fig = ds.plot.plot_maps(
    {**{name: log10(field) for name, field in panels25.items()},
     "emission inventory": np.log1p(scene25.extra["emissions"]).assign_attrs(
         long_name="log(1 + inventory)", units="log(t km-2 yr-1)")},
    share=list(panels25), cmap={**{name: "magma" for name in panels25}, "emission inventory": "Greys"},
    ncols=3, figsize_per_panel=3.6,
)

# %% [markdown]
# Here the inventory pays: LightGBM with it cuts the error of ATPK alone by about a sixth, and the
# default finds that on the coarse cells. The hot spots now sit on their emitters, as round blobs:
# the inventory knows nothing of the wind, so the plumes' direction is missing, and a few spurious
# entries light up too. Whether a covariate helps depends on the scale gap as much as on the
# covariate: with a 10 km input the coarse field had already told us what the inventory knew.
#
# ## What could go wrong?
#
# **Fill values in the coarse product.** A retrieval with `-999` for "no data" that was not masked:
# `downscale` clips the values to the lower bound 0 and warns. Coherence then holds with 0, which is
# wrong. Mask fill values as NaN first (`coarse.where(coarse > -999)`, or `mask_and_scale` when reading).

# %%
broken = scene.coarse.copy()
broken[3:5, 3:5] = -999.0
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds.Downscaler(trend="linear", calibrate_std=False).fit(broken, X)
for warning in caught:
    if "outside the bounds" in str(warning.message):
        print(f"{warning.category.__name__}: {warning.message}")

# %% [markdown]
# **The wrong transform name, or a logit without an upper bound.** NO2 has no physical maximum, so a
# logit transform needs bounds you would have to invent:

# %%
for transform in ["log", "logit"]:
    try:
        ds.Downscaler(trend="linear", transform=transform).fit(scene.coarse, X)
    except ValueError as error:
        print("ValueError:", error)

# %% [markdown]
# **`log1p` depends on the units.** `log1p(x)` is a logarithm only where `x` is much larger than 1.
# The same field in mol m-2 (values around 1e-5) makes `log1p` almost the identity, and the log
# transform silently does nothing. No error is raised: check the transform against the units.

# %%
in_mol = scene.coarse * 1e-6
in_mol.attrs = {**scene.coarse.attrs, "units": "mol m-2"}
fine_mol = ds.Downscaler(trend="linear", transform="log1p", calibrate_std=False).fit(in_mol, X).predict(X) * 1e6
print(f"linear, log1p, fitted in umol m-2: rmse {table.loc['linear, log1p', 'rmse']:.2f} umol m-2")
print(f"linear, log1p, fitted in mol m-2:  rmse {float(np.sqrt(((fine_mol - truth) ** 2).mean())):.2f} umol m-2"
      f" (no transform: {table.loc['linear, no transform', 'rmse']:.2f})")

# %% [markdown]
# **Asking for the AOA of a model that is not fitted:**

# %%
try:
    ds.explain.applicability(ds.Downscaler(trend="linear"), X)
except ValueError as error:
    print("ValueError:", error)
