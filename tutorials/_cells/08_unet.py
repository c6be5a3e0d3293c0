# %% [markdown]
# # 08 · A network trained without fine truth, with a coherence layer, against ATPRK
#
# Deep learning downscaling usually needs pairs of coarse and fine fields. Often there are none.
# `UNetDownscaler` can be trained by the **Wald protocol** instead: the coarse series is degraded
# once more (here by 2), the network learns to go from the degraded field back to the coarse one
# with the covariates aggregated to the coarse grid, and is then applied from coarse to fine with the
# fine covariates. Its last layer is a **hard constraint** (Harder et al. 2023): for precipitation a
# softmax within each coarse cell, so the output is non-negative, dry coarse cells stay dry, and each
# block of fine pixels averages exactly to its coarse value, whatever the network learned.
#
# We compare it with **ATPRK** (area-to-point regression kriging: `Downscaler` with a linear trend and
# ATPK of the residuals, fitted day by day), with plain ATPK (no covariates), with bilinear
# interpolation, and with what the constraint layer alone makes of bilinear interpolation, on ten days of synthetic precipitation with known fine truth. The network is small
# and trained for a few epochs so that the notebook runs in well under a minute on two cores; real use
# takes more epochs, more days and a wider network.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

import downscale as ds
from downscale.models.transforms import coherent_correction
from downscale.models.unet import UNetDownscaler

scene = ds.datasets.synthetic_scene("precipitation", seed=0, n_times=10, shape=(200, 200), factor=10)
covariates = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, features=["elevation", "slope", "northness"],
                                 location=False)
X = covariates[["elevation", "ndvi"]]
print(scene)
print(f"dry fine pixels: {float((scene.truth == 0).mean()):.0%}; wettest pixel {float(scene.truth.max()):.0f} mm")

SMALL = dict(base_channels=8, depth=2, max_epochs=6, n_mc=8, n_threads=2, seed=0)   # small and fast

# %% [markdown]
# ## Training by the Wald protocol
#
# `fit` needs only the coarse series and the fine covariates. `constraint="auto"` picks the softmax
# layer because the coarse field declares `valid_min = 0`. Training stops early when the loss on a
# held-out strip of the scene stops improving, and keeps the best epoch.
#
# Trained this way, the network is **per pixel** by default (`architecture="auto"`: 1 x 1 layers, no
# pooling). A UNet's 3 x 3 kernels would span three 10 km cells in training and three 1 km pixels
# in use, so the spatial patterns it learns at the Wald scale would be applied at a scale ten times
# finer; `architecture="unet"` keeps the UNet anyway. With fine truth to train on (supervised mode,
# `fit(coarse, X, y_fine=...)`) the same class builds the UNet, where its kernels see the scale they
# are used at. Everything below (the coherence layer, the anomaly channels, the dropout spread) is the same
# for both networks.

# %%
start = time.perf_counter()
unet = UNetDownscaler(**SMALL).fit(scene.coarse, X)
print(f"trained in {time.perf_counter() - start:.0f} s: {'per-pixel network' if unet.pointwise_ else 'UNet'}, "
      f"constraint {unet.constraint_!r}, Wald factor "
      f"{unet.wald_factor_}, best epoch {unet.best_epoch_} of {len(unet.history_)}")

history = pd.DataFrame(unet.history_)
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(history["epoch"], history["train_loss"], "o-", label="training tiles")
ax.plot(history["epoch"], history["validation_loss"], "s-", label="held-out strip")
ax.axvline(unet.best_epoch_, color="grey", linestyle=":", label="best epoch (kept)")
ax.set_xlabel("epoch")
ax.set_ylabel("mean squared error [coarse variance units]")
ax.set_title("Wald training: coarse / 2 -> coarse")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## The coherence layer at work

# %%
unet_fine = unet.predict(X)
back = ds.grid.block_mean(unet_fine, scene.factor, min_valid=1e-9)
dry = ds.grid.upsample(scene.coarse == 0, scene.factor, "nearest").astype(bool)
print(f"largest |block mean - coarse|: {float(abs(back - scene.coarse).max()):.2e} mm "
      f"(coarse up to {float(scene.coarse.max()):.0f} mm)")
print(f"smallest value: {float(unet_fine.min()):.1f} mm; "
      f"largest value in a dry coarse cell: {float(unet_fine.where(dry).max()):.1f} mm")

# %% [markdown]
# ## Against ATPRK, ATPK and bilinear interpolation
#
# ATPRK is a single-scene method: one `Downscaler` per day. The trend is passed explicitly
# (`trend="linear"` for ATPRK, `"none"` for ATPK alone), so the comparison does not depend on the
# package's default. "Coherent bilinear" is bilinear interpolation rescaled within each coarse cell so
# that the block means are right (`downscale.models.transforms.coherent_correction`): it is what the
# network's softmax layer outputs when the network adds nothing, so it tells us how much the network
# itself contributes.

# %%
def per_day(trend, covariates_used):
    fields = []
    for t in range(scene.coarse.sizes["time"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # small-sample variogram warnings on dry days
            model = ds.Downscaler(trend=trend, residual="atpk", calibrate_std=False)
            fields.append(model.fit(scene.coarse.isel(time=t), covariates_used).predict(covariates_used))
    return xr.concat(fields, dim="time")

start = time.perf_counter()
bilinear = ds.grid.upsample(scene.coarse, scene.factor, "bilinear")
predictions = {
    "bilinear": bilinear,
    "coherent bilinear": coherent_correction(bilinear, scene.coarse, bounds=(0.0, None)),
    "ATPK (no covariates)": per_day("none", X),
    "ATPRK (linear trend)": per_day("linear", X),
    "network (Wald)": unet_fine,
}
print(f"ATPK and ATPRK, 10 days each: {time.perf_counter() - start:.0f} s")


def rmse(field, truth=scene.truth, dims=("y", "x")):
    return np.sqrt(((field - truth) ** 2).mean(dims))

table = pd.DataFrame({
    name: {
        "rmse [mm]": float(rmse(field, dims=None)),
        "rmse, wettest 1 % of pixels [mm]": float(rmse(field.where(scene.truth > np.percentile(scene.truth, 99)), dims=None)),
        "bias [mm]": float((field - scene.truth).mean()),
        "maximum [mm]": float(field.max()),
    }
    for name, field in predictions.items()
}).T
table.round(2)

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.6))
days = pd.to_datetime(scene.truth.time.values)
for (name, field), marker in zip(predictions.items(), "osvD^"):
    ax.plot(days, rmse(field).values, marker=marker, label=name)
ax.set_xlabel("date")
ax.set_ylabel("RMSE against the 1 km truth [mm]")
ax.set_title("Day by day")
ax.legend(fontsize=8)
fig.autofmt_xdate()
fig.tight_layout()

# %%
wettest = int(np.argmax(scene.truth.mean(("y", "x")).values))
panels = {"coarse (10 km)": scene.coarse.isel(time=wettest), "truth (1 km)": scene.truth.isel(time=wettest),
          **{name: field.isel(time=wettest) for name, field in predictions.items() if name != "coherent bilinear"}}
fig = ds.plot.plot_maps(panels, share=list(panels), cmap="Blues", ncols=3, figsize_per_panel=3.6,
                        suptitle=f"The wettest day, {days[wettest]:%Y-%m-%d}")

# %% [markdown]
# Read the table from the top:
#
# - **Coherence is most of the gain.** Just rescaling bilinear interpolation within each coarse cell
#   ("coherent bilinear") takes the RMSE from 1.83 to about 1.3 mm. The network takes it to about
#   1.2 mm, less than 10 % better than that. The training curve above says the same: the loss on the
#   held-out strip moves by a few per cent, so the small network, trained for a few epochs by the Wald
#   protocol, learns little beyond its constraint layer. A larger network, more days and more epochs may learn more
#   (`benchmarks/bench_unet.py` measures it); whatever you train, measure it against the coherent
#   baseline, not against plain bilinear interpolation.
# - **ATPRK is no better than the network here**: elevation explains some of the orographic enhancement,
#   but the storms that decide where it rains are not in the terrain.
# - **Plain ATPK, without any covariate, is the best of all**, also on the wettest pixels: it places the
#   rain of each coarse cell following the spatial correlation of the field itself. On this scene the
#   covariates are not worth their risk (tutorial 02 reaches the same conclusion with tree models).
#
# Every coherent method keeps the block means (bias 0). On the wettest day, the network's map is the
# coherent bilinear one with slightly sharper edges; ATPRK adds terrain texture to the storms.
# ## A misleading covariate
#
# Now give both methods two more terrain covariates, slope and northness. The fine truth depends on
# them only weakly (a +-20 % effect of slopes facing the moist flow). ATPRK fits its linear trend on the
# 10 km cells, where these covariates vary little, in log space; applied to 1 km pixels the
# exaggerated slope becomes a multiplicative factor. The network sees covariates as *anomalies* from their
# block means, and only those whose anomalies spread about as much on the 1 km grid as at the Wald
# training scale (within a factor 2).

# %%
X_more = covariates[["elevation", "slope", "northness", "ndvi"]]
start = time.perf_counter()
unet_more = UNetDownscaler(**SMALL).fit(scene.coarse, X_more)
more = {"ATPRK (linear trend)": per_day("linear", X_more), "network (Wald)": unet_more.predict(X_more)}
print(f"{time.perf_counter() - start:.0f} s")
print(pd.DataFrame({"anomaly spread, 1 km / Wald scale": np.divide(unet_more.fine_spread_, unet_more.training_spread_),
                    "input channel": unet_more.anomaly_used_}, index=unet_more.covariate_names_).round(2))
pd.DataFrame({
    "elevation, ndvi": {name: table.loc[name, "rmse [mm]"] for name in more},
    "+ slope, northness": {name: float(rmse(field, dims=None)) for name, field in more.items()},
    "maximum [mm], + slope, northness": {name: float(field.max()) for name, field in more.items()},
}).round(2)

# %% [markdown]
# Two covariates more, and ATPRK's error is multiplied by more than six, with single pixels far wetter
# than anything in the truth: a coefficient learned from 10 km averages, applied in log space to 1 km
# pixels, is an exponential amplifier of any exaggeration (tutorial 06 shows the same effect, milder,
# for LST). The network does not change: the anomalies of slope and northness spread about 2.6 times more
# within a 10 km cell of 1 km pixels than within a 20 km cell of 10 km pixels, so what a weight learns
# about them at the Wald scale would not hold at 1 km, and the network leaves them out (`anomaly_used_`).
# Any other covariate whose fine detail the coarse cells do not show (curvatures, small-radius TPI,
# location) is left out the same way. That is a real advantage of its design, and a reason to check
# every covariate you give to a regression trend.
# ## Uncertainty from Monte-Carlo dropout
#
# `predict(X, return_std=True)` runs the network `n_mc` times with dropout switched on and returns the
# spread. It is cheap to ask for one day with `coarse=`. Is it an honest uncertainty? Compare it with
# the actual error on the wettest day:

# %%
day = scene.coarse.isel(time=[wettest])
mean, std = unet.predict(X, return_std=True, coarse=day)
error = abs(mean - scene.truth.isel(time=[wettest]))
error.attrs = {"long_name": "|network - truth|", "units": "mm"}
inside = float((error <= 1.6449 * std).where(scene.truth.isel(time=[wettest]) > 0).mean())
print(f"standard deviation: median {float(std.median()):.4f} mm, largest {float(std.max()):.3f} mm; "
      f"absolute error: median {float(error.median()):.2f} mm, largest {float(error.max()):.1f} mm")
print(f"wet pixels whose error is inside +-1.645 std (nominal 90 %): {inside:.0%}")
fig = ds.plot.plot_maps({"MC-dropout standard deviation": std, "absolute error": error}, cmap="Reds",
                        figsize_per_panel=3.8)   # separate colour ranges: on a shared one the std is invisible

# %% [markdown]
# **The Monte-Carlo dropout spread is not an uncertainty.** It is 60 to 90 times smaller than the
# actual errors, and almost no wet pixel has its error inside the nominal 90 % interval. Dropout
# measures how much the network's *correction* varies when some of its channels are dropped; the
# error here comes from where the storm sits inside each coarse cell, which the network cannot know
# and dropout cannot see. Do not use it as a confidence interval. For an uncertainty that can be
# checked, use the `Downscaler`'s standard deviation (calibrated by the Wald protocol, tutorial 05)
# or station coverage.
# ## What could go wrong?
#
# **One scene is not enough to train.** The network learns from many tiles over many time steps; with a
# single day there are too few. Use ATPRK (`Downscaler`) for single scenes.

# %%
try:
    UNetDownscaler(**SMALL).fit(scene.coarse.isel(time=[0]), X)
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **A coarse grid too small for the Wald protocol.** Degrading 10 x 10 cells by 2 leaves 5 x 5, too
# few to learn from.

# %%
small = scene.coarse.isel(y=slice(0, 10), x=slice(0, 10))
try:
    UNetDownscaler(**SMALL).fit(small, X.isel(y=slice(0, 100), x=slice(0, 100)))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **Other covariates at prediction than at training**, and **a grid at another factor**: the network's
# input channels are fixed at fit.

# %%
for attempt in (lambda: unet.predict(X[["elevation"]]), lambda: unet.predict(ds.grid.block_mean(X, 2))):
    try:
        attempt()
    except ValueError as error:
        print("ValueError:", error)

# %% [markdown]
# **Predicting before fitting** (for example after `UNetDownscaler(...)` in a new session instead of
# `UNetDownscaler.load(path)`):

# %%
try:
    UNetDownscaler(**SMALL).predict(X)
except RuntimeError as error:
    print("RuntimeError:", error)
