# %% [markdown]
# # 03 · Land surface temperature: NDVI, terrain, and what the model learned
#
# Thermal sharpening of LST has a classic recipe: **TsHARP** (Kustas et al. 2003; Agam et al. 2007).
# Regress coarse LST on coarse NDVI (vegetated pixels are cooler: they evaporate), apply the line to
# fine NDVI, and add each coarse cell's residual back to all its fine pixels. It is simple, coherent,
# and knows one driver.
#
# In mountains LST also follows elevation (about -6.5 K per km) and aspect (sun-facing slopes are
# warmer). This notebook compares TsHARP with the `Downscaler` given NDVI *and* terrain, and then uses
# SHAP to check that the trend learned physics and not noise.

# %%
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

import downscale as ds

scene = ds.datasets.synthetic_scene("lst", seed=3)          # 400 x 400 km, 25 km -> 1 km
X = ds.covariates.build(
    dem=scene.dem, ndvi=scene.ndvi,
    features=["elevation", "slope", "northness", "eastness", "tpi"], tpi_radii=(5000.0,),
)
X = X.drop_vars(["ndvi_gap", "fvc"])        # keep one vegetation index, so SHAP is easy to read
print(scene)
print(list(X.data_vars))

# %%
fig = ds.plot.plot_maps(
    {"coarse LST (25 km)": scene.coarse, "NDVI (1 km)": X["ndvi"].where(scene.mask), "elevation (1 km)": X["elevation"]},
    cmap={"coarse LST (25 km)": "inferno", "NDVI (1 km)": "YlGn", "elevation (1 km)": "terrain"},
)

# %% [markdown]
# ## TsHARP, written out
#
# Twelve lines, all of them with `downscale` building blocks: `covariates.aggregate` gives the coarse NDVI
# with the same block mean that defines coherence, and `grid.upsample(..., "nearest")` spreads each
# coarse residual over its block.

# %%
def tsharp(coarse, ndvi, mask, factor):
    ndvi = ndvi.where(mask)
    ndvi_coarse = ds.covariates.aggregate(ndvi.to_dataset(name="ndvi"), coarse)["ndvi"]
    ok = np.isfinite(coarse.values) & np.isfinite(ndvi_coarse.values)
    line = LinearRegression().fit(ndvi_coarse.values[ok][:, None], coarse.values[ok])
    trend = ndvi.copy(data=line.predict(np.nan_to_num(ndvi.values).reshape(-1, 1)).reshape(ndvi.shape)).where(mask)
    residual = coarse - ds.grid.block_mean(trend, factor, min_valid=1e-9)
    result = (trend + ds.grid.upsample(residual, factor, "nearest")).where(mask)
    result.attrs = dict(coarse.attrs)
    return result.rename(coarse.name), line

tsharp_lst, line = tsharp(scene.coarse, X["ndvi"], scene.mask, scene.factor)
print(f"TsHARP line: LST = {line.intercept_:.1f} K + {line.coef_[0]:.1f} K x NDVI")

# %% [markdown]
# ## The Downscaler with NDVI and terrain
#
# A linear trend (ridge regression) and a LightGBM trend, each followed by area-to-point kriging of the
# residuals.

# %%
linear = ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
lightgbm = ds.Downscaler(trend="lightgbm", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
predictions = {
    "bilinear": ds.grid.upsample(scene.coarse, scene.factor, "bilinear").where(scene.mask),
    "TsHARP (NDVI)": tsharp_lst,
    "linear + ATPK": linear.predict(X),
    "LightGBM + ATPK": lightgbm.predict(X),
}

def rmse(field):
    return float(np.sqrt(((field - scene.truth) ** 2).mean()))

table = pd.DataFrame({
    name: {
        "rmse vs truth [K]": rmse(field),
        "station rmse [K]": ds.validation.station_scores(field, scene.stations, ci=False).loc["overall", "rmse"],
        "max |block mean - coarse| [K]": float(abs(ds.grid.block_mean(field, scene.factor) - scene.coarse).max()),
    }
    for name, field in predictions.items()
}).T
table.round(3)

# %%
window = {"y": slice(100, 250), "x": slice(150, 300)}   # a 150 km window in the mountains
fig = ds.plot.plot_maps(
    {name: field.isel(window) for name, field in [("truth", scene.truth), *predictions.items()]},
    share=["truth", *predictions],
    cmap="inferno",
    ncols=5,
    figsize_per_panel=3.2,
)

# %% [markdown]
# TsHARP is **worse than bilinear interpolation** on this scene, and its line has the wrong sign:
# LST *rises* with NDVI, while the scene was built with vegetation cooling the surface by 8 K per unit
# of NDVI. The reason is confounding: at 25 km, low NDVI means the treeline, which means high and cold
# ground, so across coarse cells NDVI stands in for elevation. A one-driver regression cannot separate
# them, and its blocky map (the residual added per coarse cell) shows it.
#
# With terrain in the model, the **linear trend + ATPK** is clearly the best: it recovers the
# elevation pattern inside each 25 km cell. LightGBM with the same covariates does only slightly better
# than bilinear: with 256 coarse cells, trees learn steps rather than a smooth lapse rate, and cannot
# extrapolate to 1 km pixels higher or lower than any 25 km average. All methods except bilinear are
# coherent.
#
# ## What did the trend learn? SHAP
#
# SHAP splits the trend at each pixel into a base value plus one contribution per covariate.
# `ds.explain.shap_values` uses the exact TreeSHAP algorithm for LightGBM and the closed form for the
# linear trend, on a random sample of fine pixels; `global_importance` ranks the covariates.

# %%
explained = {"linear": ds.explain.shap_values(linear, X, sample=1500),
             "LightGBM": ds.explain.shap_values(lightgbm, X, sample=1500)}
pd.DataFrame({name: ds.explain.global_importance(e)["share"] for name, e in explained.items()}).sort_values("linear", ascending=False).round(3)

# %%
fig = ds.plot.plot_shap_summary(explained["LightGBM"], kind="beeswarm", title="SHAP of the LightGBM trend [K]")

# %% [markdown]
# Both trends put elevation first by far, as in the equations that made the scene. In the beeswarm,
# high elevation (red) pushes LST down. The slope of a covariate's SHAP values against its values is
# the effect the trend learned: compare with the truth (-6.5 K per km, -8 K per unit of NDVI).

# %%
for name, e in explained.items():
    lapse = np.polyfit(e.data["elevation"].to_numpy(), e.values["elevation"].to_numpy(), 1)[0] * 1000
    vegetation = np.polyfit(e.data["ndvi"].to_numpy(), e.values["ndvi"].to_numpy(), 1)[0]
    print(f"{name:9s} learned: {lapse:5.1f} K per km of elevation, {vegetation:5.1f} K per unit of NDVI")
fig = ds.plot.plot_shap_dependence(explained["LightGBM"], "elevation", color_by="ndvi")
fig.axes[0].set_xlabel("elevation [m]")
fig.axes[0].set_ylabel("SHAP value of elevation [K]")
fig.axes[-1].set_ylabel("NDVI [1]");

# %% [markdown]
# SHAP maps show where each covariate matters (on a strided sub-grid, to keep them cheap):

# %%
maps = ds.explain.shap_maps(linear, X, stride=4)
land = scene.mask.isel(y=slice(None, None, 4), x=slice(None, None, 4))
for name in linear.features_used_:
    maps[name].attrs["units"] = "K"
fig = ds.plot.plot_maps({f"SHAP of {name} (linear trend)": maps[name].where(land)
                         for name in linear.features_used_}, cmap="RdBu_r")
# Share of each covariate's 1 km spread that its 25 km block means keep, and which trend uses it.
pd.DataFrame({"retention": linear.retention_,
              "in the linear trend": [n in linear.features_used_ for n in linear.feature_names_],
              "in the LightGBM trend": [n in lightgbm.features_used_ for n in lightgbm.feature_names_]},
             index=linear.feature_names_).round(2)

# %% [markdown]
# NDVI enters with the right (negative) sign once elevation is there to take its share, though weaker
# than the true -8 K (LightGBM much weaker). Aspect (`northness`) is not in the linear trend at all,
# although the scene makes sun-facing slopes up to 2.5 K warmer: north and south faces cancel inside
# every 25 km block, so the block means keep well under half of its spread (the table), too little for
# the coarse cells to teach a linear trend its 1 km effect, and the `Downscaler` leaves it out
# (`min_retention`). Trees, which cannot extrapolate, may use it; the beeswarm above shows how little
# they get from it. Sub-cell physics that averages out at the coarse scale is beyond the reach of any
# regression-kriging downscaler.
#
# Remember what SHAP explains: the *trend*, fitted on 25 km block means. It does not explain the kriged
# residual, and it says what the model uses, not that the model is right; the truth table above does
# that.
#
# ## What could go wrong?
#
# **SHAP of a model that has no trees and is not the built-in linear trend.** TreeSHAP needs a tree
# model; the linear trend has a closed form. Anything else (here a k-nearest-neighbours regressor)
# gets a clear error rather than a slow, approximate answer.

# %%
from sklearn.neighbors import KNeighborsRegressor

knn = ds.Downscaler(trend=KNeighborsRegressor(n_neighbors=5), calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
try:
    ds.explain.shap_values(knn, X, sample=200)
except (TypeError, ValueError) as error:
    print(f"{type(error).__name__}:", error)

# %% [markdown]
# **Explaining an unfitted model.** Fit first.

# %%
try:
    ds.explain.shap_values(ds.Downscaler(), X)
except (TypeError, ValueError) as error:
    print(f"{type(error).__name__}:", error)

# %% [markdown]
# **NDVI with gaps (clouds).** `covariates.build` fills NDVI gaps by default and adds `ndvi_gap` so the
# model knows where; with `fill_ndvi=False` the holes reach the Downscaler, which refuses to invent a
# trend there.

# %%
cloudy = scene.ndvi.where((scene.ndvi.x < 420_000) | (scene.ndvi.y < 5_200_000))
X_cloudy = ds.covariates.build(dem=scene.dem, ndvi=cloudy, features=["elevation"], fill_ndvi=False)
try:
    ds.Downscaler(trend="linear").fit(scene.coarse, X_cloudy, mask=scene.mask)
except ValueError as error:
    print("ValueError:", error)
