# %% [markdown]
# # 06 · Validation when fine truth is sparse
#
# In real life there is no fine truth map. There is the coarse field itself, a few dozen stations,
# and the downscaled map. This notebook shows three checks and what each can and cannot tell you:
#
# 1. **cross-validation at the coarse scale**, with random, spatial-block and kNNDM folds;
# 2. **station scores with confidence intervals**;
# 3. **the hallucination check**: does the downscaled map have more fine-scale detail than reality?
#
# The synthetic scene keeps the truth, so we can grade the checks themselves.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import downscale as ds

scene = ds.datasets.synthetic_scene("lst", seed=5, shape=(240, 240), factor=8, n_stations=40)
X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, features=["elevation", "slope", "northness"],
                        tpi_radii=(5000.0,)).drop_vars(["ndvi_gap", "fvc"])
print(scene)

# %% [markdown]
# ## 1. Cross-validation at the coarse scale
#
# A coherent downscaling reproduces every coarse cell it was fitted on, so the fitted cells say nothing.
# `cross_validate` holds coarse cells out, fits on the rest, predicts the fine field, averages it back
# and scores the held-out cells. *Which* cells are held out together is the whole question.
#
# The task we grade: a 9 x 9 cell region (72 km) of the coarse field is missing (say, a persistent cloud).
# We downscale the rest and predict there too; because the scene keeps the full coarse field, we know the
# true error of the block means over the gap. Which cross-validation, run only on the cells we have,
# predicts that error? (Three folds each, to keep the notebook fast; use five or more in practice.)

# %%
gap = (
    (scene.coarse.y <= scene.coarse.y[14]) & (scene.coarse.y >= scene.coarse.y[22])
    & (scene.coarse.x >= scene.coarse.x[6]) & (scene.coarse.x <= scene.coarse.x[14])
)
cloudy = scene.coarse.where(~gap)
model = ds.Downscaler(trend="linear", calibrate_std=False)
fine = model.fit(cloudy, X, mask=scene.mask).predict(X)
back = ds.grid.block_mean(fine, scene.factor, min_valid=1e-9)
true_gap_rmse = float(np.sqrt(((back - scene.coarse) ** 2).where(gap).mean()))
print(f"true RMSE of the block means over the cloud gap: {true_gap_rmse:.2f} K")

# %%
fine_pixels = fine.where(ds.grid.upsample(gap, scene.factor, "nearest").astype(bool))   # where we predict
cvs = {
    "random 3-fold": 3,
    "spatial blocks": ds.validation.SpatialBlockKFold(n_splits=3, block_size=48_000),
    "kNNDM": ds.validation.KNNDMKFold(n_splits=3, prediction_points=fine_pixels),
}
results = {name: ds.validation.cross_validate(model, cloudy, X, cv=cv, mask=scene.mask) for name, cv in cvs.items()}
summary = pd.DataFrame({name: r.scores[["n", "rmse", "bias", "r"]] for name, r in results.items()}).T
summary.loc["truth over the gap", "rmse"] = true_gap_rmse
summary.round(3)

# %%
fold_colours = matplotlib.colors.ListedColormap(plt.cm.tab10.colors[:3])
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, (name, result) in zip(axes, results.items()):
    folds = result.folds.where(result.folds >= 0)
    image = ax.imshow(folds.values, cmap=fold_colours, vmin=-0.5, vmax=2.5, interpolation="nearest",
                      extent=[float(folds.x.min()) / 1e3 - 4, float(folds.x.max()) / 1e3 + 4,
                              float(folds.y.min()) / 1e3 - 4, float(folds.y.max()) / 1e3 + 4])
    ax.set_title(f"{name}: rmse {result.scores['rmse']:.2f} K")
    ax.set_xlabel("easting [km]")
    ax.set_ylabel("northing [km]")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fold [index]", ticks=range(3))
fig.suptitle("Held-out folds of the coarse cells (white: cloud gap or sea)")
fig.tight_layout()

# %% [markdown]
# The score of each fold shows how much a single CV number can move; the black line is the error we
# are trying to predict.

# %%
fig = ds.plot.plot_cv_scores(results, units="K", title="Coarse-scale RMSE per fold")
fig.axes[0].axhline(true_gap_rmse, color="black", linewidth=2, label=f"true error over the gap {true_gap_rmse:.2f}")
fig.axes[0].legend(fontsize=7, ncol=2, loc="upper left")
fig.axes[0].set_ylim(0, 1.6 * max(true_gap_rmse, max(r.fold_scores["rmse"].max() for r in results.values())))

# %% [markdown]
# Random folds scatter held-out cells among training cells: every test cell has fitted neighbours a
# few kilometres away, the kriging of the residuals interpolates from them, and the score (0.35 K)
# is **less than half** the true error over the gap (0.77 K). Spatial blocks hold out whole regions and
# land on the pessimistic side (0.89 K); kNNDM shapes its folds so that the distances from held-out
# cells to the nearest training cell match the distances from the gap's pixels to the nearest cell
# with data, and gives 0.66 K here: closer, a little optimistic. With three folds and one gap each
# number is itself uncertain by a tenth of a kelvin or more; the ranking (random much too optimistic)
# is what holds in general. Report the CV that matches how you will *use* the map.
#
# ## 2. Station scores, with confidence intervals
#
# Forty stations are few. `station_scores` adds percentile-bootstrap intervals (90 % by default) to the
# overall row, and a table per station. Compare the downscaled map with bilinear interpolation of the
# same (gappy) coarse field:

# %%
bilinear = ds.grid.upsample(cloudy, scene.factor, "bilinear").where(scene.mask)
stations = {name: ds.validation.station_scores(field, scene.stations, coarse=cloudy)
            for name, field in {"downscaled": fine, "bilinear": bilinear}.items()}
columns = ["n", "rmse", "rmse_low", "rmse_high", "bias", "bias_low", "bias_high", "kge"]
pd.DataFrame({name: s.loc["overall", columns] for name, s in stations.items()}).T.round(3)

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for row, (name, s) in enumerate(stations.items()):
    low, mid, high = s.loc["overall", ["rmse_low", "rmse", "rmse_high"]]
    ax.errorbar(mid, row, xerr=[[mid - low], [high - mid]], fmt="o", capsize=5, label=name)
ax.set_yticks(range(len(stations)))
ax.set_yticklabels(list(stations))
ax.set_ylim(-0.8, len(stations) - 0.2)
ax.set_xlabel("station RMSE [K] (90 % bootstrap interval)")
ax.set_title("40 stations: how sure are we?")
fig.tight_layout()

# %%
differences = []
rng = np.random.default_rng(0)
observed = scene.stations["value"].to_numpy()
error_fine = ds.validation.extract_at_points(fine, scene.stations) - observed
error_bilinear = ds.validation.extract_at_points(bilinear, scene.stations) - observed
ok = np.isfinite(error_fine) & np.isfinite(error_bilinear)
for _ in range(2000):
    pick = rng.choice(np.flatnonzero(ok), size=ok.sum(), replace=True)
    differences.append(np.sqrt(np.mean(error_bilinear[pick] ** 2)) - np.sqrt(np.mean(error_fine[pick] ** 2)))
low, high = np.percentile(differences, [5, 95])
print(f"RMSE(bilinear) - RMSE(downscaled): {np.mean(differences):.3f} K, 90 % interval [{low:.3f}, {high:.3f}] K")

# %% [markdown]
# The downscaled map scores better at the stations (0.81 K against 0.94 K RMSE), but the two 90 %
# intervals overlap. Overlap is not the right test either: both RMSEs are computed at the same stations,
# so their errors are correlated. The paired bootstrap above resamples stations once for both and gives
# the interval of the *difference*: 0.12 K in favour of downscaling, with a 90 % interval from
# -0.10 to 0.35 K. It includes zero: **forty stations cannot tell these two maps apart with confidence**,
# although the full truth says that downscaling is clearly better (0.60 K against 0.79 K for the complete
# field, in the table below). Part of every station
# error is point-scale noise (0.5 K here) that no 1 km map can remove.
#
# ## 3. The hallucination check
#
# A downscaling can look sharp and still be wrong: detail invented by the trend, not measured. The
# radially averaged power spectrum shows where the variance of a field sits, scale by scale. A good
# downscaled field follows the truth's spectrum; **power above the truth's at short wavelengths is
# invented detail**, power below it is smoothing. Without fine truth, use an independent fine-scale
# product for the reference (a high-resolution model run, an airborne campaign).
#
# Here we compare the downscaled field from above (refitted on the complete coarse field) with the same
# model without the `northness` covariate, with bilinear interpolation, and with the truth.

# %%
without_aspect = [name for name in X.data_vars if name != "northness"]
complete = {
    "linear + ATPK": ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X, mask=scene.mask).predict(X),
    "same, without northness": ds.Downscaler(trend="linear", calibrate_std=False)
        .fit(scene.coarse, X[without_aspect], mask=scene.mask).predict(X[without_aspect]),
}
fields = {"truth": scene.truth, **complete,
          "bilinear": ds.grid.upsample(scene.coarse, scene.factor, "bilinear").where(scene.mask)}
table = ds.validation.spectrum_comparison(fields, reference="truth")
fig = ds.plot.plot_spectra({name: (part["wavenumber"], part["power"]) for name, part in table.groupby("field", sort=False)},
                           title="Power spectra: where does each field put its variance?")
ax = fig.axes[0]
ax.set_ylabel("power spectral density [K2 m2]")
ax.axvline(1 / scene.factor, color="grey", linestyle=":")
ax.text(1 / scene.factor, ax.get_ylim()[0] * 3, " 1 / coarse cell", color="grey", fontsize=8);

# %%
short = table[(table["wavelength"] < 2 * scene.factor * 1000.0) & (table["field"] != "truth")]
pd.DataFrame({
    "median power / truth, wavelengths < 16 km": short.groupby("field", sort=False)["ratio"].median(),
    "effective resolution [km]": pd.Series({name: ds.validation.effective_resolution(field, scene.truth) / 1000
                                            for name, field in fields.items() if name != "truth"}),
    "rmse vs truth [K]": pd.Series({name: float(np.sqrt(((field - scene.truth) ** 2).mean()))
                                    for name, field in fields.items() if name != "truth"}),
}).round(2)

# %%
northness_coarse = ds.covariates.aggregate(X[["northness"]].where(scene.mask), scene.coarse)["northness"]
print(f"spread of northness: {float(X['northness'].where(scene.mask).std()):.2f} over 1 km pixels, "
      f"{float(northness_coarse.std()):.2f} over 8 km cells")
fig = ds.plot.plot_maps({name: field.isel(y=slice(80, 160), x=slice(80, 160)) for name, field in fields.items()},
                        share=list(fields), cmap="inferno", ncols=4, figsize_per_panel=3.3)

# %% [markdown]
# Bilinear interpolation has almost no power below the coarse cell size (ratio 0.00): smooth, no
# detail, and an effective resolution of about 29 km. The model without northness keeps a fifth of the
# truth's short-wavelength power, which is smoothing (honest: the missing detail is missing).
# The full model has **1.6 times** the truth's power at wavelengths below 16 km: the stripy texture of
# slope aspect is stronger in the map than in reality. That is the hallucination the check is for, and
# the two usual summaries miss it: its RMSE against the truth (0.60 K) is worse than without
# northness (0.55 K), and its "effective resolution" of 2 km rewards the invented detail, since a
# field with *more* power than the reference always looks resolved. Read the power ratio, not only the
# resolution.
#
# Why does it happen? The trend learns the effect of northness from 8 km averages, where northness
# varies little (spread 0.40 against 0.69 at 1 km) and is mixed up with the terrain around it; the slope
# it finds there is then applied to 1 km pixels. Compare the effect per unit of northness learned at
# the two scales (the fine one needs the truth, so only a synthetic scene can show it):

# %%
from sklearn.linear_model import LinearRegression

def effect_per_unit(fields, target):
    table = np.column_stack([fields[name].values.ravel() for name in X.data_vars])
    values = target.values.ravel()
    ok = np.isfinite(table).all(axis=1) & np.isfinite(values)
    return dict(zip(X.data_vars, LinearRegression().fit(table[ok], values[ok]).coef_))

coarse_effect = effect_per_unit(ds.covariates.aggregate(X.where(scene.mask), scene.coarse), scene.coarse)
fine_effect = effect_per_unit(X.where(scene.mask), scene.truth)
print(f"LST change per unit of northness: learned from 8 km cells {coarse_effect['northness']:.2f} K, "
      f"in the 1 km truth {fine_effect['northness']:.2f} K")

# %% [markdown]
# The coarse-scale effect is about one and a half times the fine-scale one, and the trend carries that
# exaggeration to every pixel (the coherence step cannot fix it: it only makes the block means right).
# What to do: drop or shrink covariates whose coarse-scale effect you cannot trust (the spectrum
# tells you which), or use a model whose coefficients are checked at the fine scale (stations, an
# independent product).
#
# ## What could go wrong?
#
# **More folds than blocks.** Spatial blocks larger than the domain allows leave too few blocks to
# spread over the folds:

# %%
try:
    ds.validation.cross_validate(model, cloudy, X, cv=ds.validation.SpatialBlockKFold(n_splits=5, block_size=150_000))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **kNNDM without the prediction locations.** kNNDM matches the distances of the prediction task, so it
# has to know where you will predict:

# %%
try:
    ds.validation.cross_validate(model, cloudy, X, cv=ds.validation.KNNDMKFold(n_splits=5))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **Spatial folds on a latitude/longitude grid.** Block sizes and buffers are in metres; reproject the
# coordinates (or the grid) to a projected CRS first.

# %%
geographic = ds.grid.make_grid((10, 10), 0.25, origin=(5.0, 45.0), crs="EPSG:4326")
try:
    list(ds.validation.SpatialBlockKFold(n_splits=2).split(geographic))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **Stations outside the grid**, usually a CRS mix-up (longitude/latitude read as metres): the scores
# refuse rather than return NaN quietly.

# %%
wrong = scene.stations.copy()
wrong["geometry"] = wrong.geometry.translate(xoff=-2_000_000)
try:
    ds.validation.station_scores(fine, wrong)
except ValueError as error:
    print("ValueError:", error)
