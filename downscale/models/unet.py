"""UNetDownscaler: a coherent, optionally self-supervised (Wald protocol) convolutional downscaler (needs PyTorch).

What the network sees and predicts
----------------------------------
The input channels, on the grid being predicted, are

* the *baseline*: the coarse field brought onto that grid (bilinear or nearest);
* every covariate of ``X`` (DEM features, NDVI, location, ...);
* every covariate's *anomaly*: the covariate minus its own block mean brought back
  with the same upsampling, i.e. the fine detail the baseline cannot know about.

All channels are normalised with means and standard deviations computed at
fit time and stored in the model, then clipped to +-``CHANNEL_CLIP``. In Wald
mode only the anomalies are channels: the baseline (still the field being
corrected) and the raw covariates are seen at another scale in training
(blocks of ``k`` coarse cells) than in use (blocks of 1 km cells), and the
network would misapply their shapes. Nor does every anomaly transfer: the
anomaly of a curvature, a small-radius TPI, a slope or a roughness spreads 3
to 40 times more within a 25 km block of 1 km cells than within a block of
``k`` 25 km cells (``fine_spread_`` / ``training_spread_``), so a weight learnt
at the Wald scale, small there, becomes fine-scale noise; and a location
coordinate has almost no anomaly (bilinear reproduces it) except at the edges,
where collinear location channels learn large weights that cancel only at the
training scale. A covariate's anomaly is therefore a channel only when its
spread on the fine grid is within ``MAX_SPREAD_RATIO`` (2) of its spread at the
training scale (``anomaly_used_``; on the synthetic scenes: elevation, NDVI,
FVC and sometimes TPI 15 km, whose ratios are 0.7-1.6). For the same reason
the Wald network works per pixel by default (``architecture="auto"``: 1 x 1
layers, no pooling, no normalisation over the tile, ``pointwise_``; pass
``architecture="unet"`` to keep the UNet): a 3 x 3 kernel spans 75 km in
training and 3 km in use. Measured with ``benchmarks/bench_unet.py`` (400 x 400 cells, factor
25, 30 days, 22 covariates), RMSE as a ratio of coherent bilinear (the
untrained network), seeds 0 / 1 / 2:

=============  =====================  ====================  ========================
variable       all anomalies, UNet    scale-similar, UNet   scale-similar, per pixel
=============  =====================  ====================  ========================
LST            1.15 / - / -           0.62 / 0.65 / 0.67    0.60 / 0.63 / 0.57
precipitation  0.97 / - / -           0.99 / 0.96 / 0.96    0.97 / 0.96 / 0.96
NO2            1.18 / - / -           1.00 / 1.00 / 0.98    0.98 / 0.99 / 0.97
soil moisture  - / - / -              0.95 / 0.96 / 0.96    0.94 / 0.93 / 0.92
=============  =====================  ====================  ========================

(The NO2 row is of the scene before its emitters stayed put over the days and came with an emission
inventory; with the inventory among the covariates, seed 0, per pixel: 0.985. The soil-moisture row
is without the scene's daily 1 km LST; with it, seed 0, per pixel: 0.559.)

Without the clip the 1 km channels, far outside the training range, gave 20
to 60 times bilinear's RMSE for precipitation and NO2. When no covariate
passes, the model is the coherent baseline (with a warning). In supervised
mode training and use are at the same scale: all three kinds are channels and
the network is the UNet.

The network predicts a *correction* of the baseline (residual learning), and a
final constraint layer (Harder et al., "Hard-constrained deep learning for
climate downscaling", JMLR 2023) makes every output block average exactly to
its coarse value:

* ``"additive"``: ``y = y~ + (c - mean_block(y~))``, for unbounded variables (temperature);
* ``"multiplicative"``: ``y = y~ * c / mean_block(y~)`` with ``y~ >= 0`` (softplus);
* ``"softmax"``: ``y = c * exp(l) / mean_block(exp(l))`` with logits ``l = log(baseline) + correction``;
  non-negative, and a dry coarse cell gives a dry block. ``"auto"`` picks it for variables with a lower
  bound of 0 (precipitation, NO2, soil moisture: ``valid_min >= 0`` or a known ``standard_name``).

The block mean is the one of :func:`downscale.grid.block_mean` (NaN-aware,
area-weighted rows on geographic grids). The network applies it in float32 while
training; at prediction the same constraint is applied once more in float64 with
:func:`downscale.models.transforms.coherent_correction`, so coherence holds to
float64 rounding, not float32.

The two ways to train
---------------------
``mode="supervised"``: the user has fine fields ``y_fine`` (e.g. high-resolution
model runs) paired with the coarse ones; tiles of the fine grid are the
training examples.

``mode="wald"`` (no fine truth): the coarse series is degraded by
``wald_factor`` (``k``), and the network learns ``coarse / k -> coarse`` with
the covariates aggregated to the coarse grid; it is then applied
``coarse -> fine`` at the real factor with the fine covariates. A 16 x 16
coarse scene cannot be degraded by its own factor of 25 (it would leave less
than one cell), so ``k`` defaults to the largest factor that keeps at least
8 x 8 degraded cells (2 for a 16 x 16 scene). The network is therefore trained
to map a field at resolution ``r * k`` to ``r`` and applied at ``r -> r / 25``:
it is made as scale-free as possible by working with anomalies of the
covariates relative to their block means (a lapse rate or an orographic
enhancement links the same anomalies at every scale), but nothing guarantees
that what is learnt at one scale holds at another. Check the result (e.g. with
stations, or a supervised run where truth exists) before trusting it.

Training draws random tiles (whole blocks, over all time steps) from the part
of the grid left of a spatially held-out validation strip (the last
``validation_fraction`` of the block columns); it stops early when the loss on
that strip has not improved for ``patience`` epochs and keeps the best weights.
The untrained network (its last layers start at zero, so its correction is 0 and
the output is the coherent baseline) is a candidate too: when no epoch beats it
on the validation strip, the model stays the coherent baseline, ``best_epoch_``
is 0 and a warning says so.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator

from .. import grid as grid_module

__all__ = ["UNetDownscaler"]

logger = logging.getLogger(__name__)

TORCH_MISSING = (
    "UNetDownscaler needs PyTorch, which is not installed. Install the extra with "
    '`pip install torch==2.13.0` then `pip install -e ".[unet]"`.'
)

#: Fewest training tiles (time steps x non-overlapping tiles left of the validation strip) to train on.
MIN_TRAINING_TILES = 8
#: The Wald protocol picks the largest degradation factor that leaves at least this many cells per axis.
MIN_WALD_CELLS = 8
#: Standard names of variables that cannot be negative (``constraint="auto"`` chooses ``"softmax"``).
NON_NEGATIVE_NAMES = {
    "lwe_thickness_of_precipitation_amount",
    "precipitation_amount",
    "precipitation_flux",
    "troposphere_mole_content_of_nitrogen_dioxide",
    "volume_fraction_of_condensed_water_in_soil",
}
#: Normalised input channels are clipped to +- this many standard deviations.
CHANNEL_CLIP = 5.0
#: Wald mode keeps a covariate's anomaly as a channel only when its spread on the fine grid is within
#: this factor of its spread at the training scale (see the module notes).
MAX_SPREAD_RATIO = 2.0
SAVE_FORMAT = "downscale.UNetDownscaler"
SAVE_VERSION = 2  # 2: anomaly_used_ and the per-pixel Wald network (pointwise_)
_CONSTRAINTS = ("auto", "additive", "multiplicative", "softmax", "none")


def _import_torch():
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised by monkeypatching sys.modules
        raise ImportError(TORCH_MISSING) from error
    return torch


# ----------------------------------------------------------------------- network


@functools.lru_cache(maxsize=1)
def _network_classes():
    """Define the torch modules on first use, so this module imports without torch."""
    torch = _import_torch()
    nn = torch.nn
    functional = torch.nn.functional

    class ConvBlock(nn.Module):
        def __init__(self, n_in, n_out, dropout):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Conv2d(n_in, n_out, 3, padding=1),
                nn.GroupNorm(1, n_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(n_out, n_out, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

        def forward(self, x):
            return self.dropout(self.layers(x))

    class UNet(nn.Module):
        """A small UNet plus a 1 x 1 linear path from the inputs, predicting one correction channel.

        With ``pointwise=True`` (Wald mode) it is a per-pixel network instead: two 1 x 1 layers of
        ``2 * base_channels`` with channel dropout, no pooling and no normalisation over the tile, so
        that it computes the same function of a pixel's channels at every grid spacing.
        """

        def __init__(self, n_in, base_channels, depth, dropout, pointwise=False):
            super().__init__()
            self.pointwise = pointwise
            if pointwise:
                depth = 0
                width = 2 * base_channels
                self.body = nn.Sequential(
                    nn.Conv2d(n_in, width, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 1),
                    nn.ReLU(inplace=True),
                    nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
                )
                self.head = nn.Conv2d(width, 1, 1)
                self.linear = nn.Conv2d(n_in, 1, 1)
                for layer in (self.head, self.linear):
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)
                return
            self.depth = depth
            widths = [base_channels * 2**level for level in range(depth + 1)]
            self.down = nn.ModuleList()
            n = n_in
            for level in range(depth + 1):
                # Dropout only below the top level, so MC dropout perturbs the learnt context, not the inputs.
                self.down.append(ConvBlock(n, widths[level], dropout if level > 0 else 0.0))
                n = widths[level]
            self.up = nn.ModuleList()
            for level in reversed(range(depth)):
                self.up.append(ConvBlock(widths[level + 1] + widths[level], widths[level], dropout))
            self.head = nn.Conv2d(widths[0], 1, 1)
            self.linear = nn.Conv2d(n_in, 1, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

        def forward(self, x):
            if self.pointwise:
                return self.head(self.body(x)) + self.linear(x)
            ny, nx = x.shape[-2:]
            multiple = 2**self.depth
            pad_y, pad_x = (-ny) % multiple, (-nx) % multiple
            if pad_y or pad_x:
                x = functional.pad(x, (0, pad_x, 0, pad_y), mode="replicate")
            skips = []
            h = x
            for level, block in enumerate(self.down):
                if level > 0:
                    h = functional.avg_pool2d(h, 2)
                h = block(h)
                skips.append(h)
            skips.pop()
            for block in self.up:
                skip = skips.pop()
                h = functional.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                h = block(torch.cat([h, skip], dim=1))
            out = self.head(h) + self.linear(x)
            return out[..., :ny, :nx]

    return {"UNet": UNet}


def _block_mean_torch(values, weights, factor):
    """Weighted block mean over ``factor x factor`` blocks (weights 0 leave a pixel out)."""
    torch = _import_torch()
    functional = torch.nn.functional
    total = functional.avg_pool2d(values * weights, factor)
    weight = functional.avg_pool2d(weights, factor)
    return total / torch.clamp(weight, min=1e-12)


def _constrain(correction, baseline, coarse, weights, factor, constraint, scale):
    """The coherence layer: turn the network's correction into a field whose block means equal ``coarse``."""
    torch = _import_torch()
    functional = torch.nn.functional

    def up(block_values):
        return torch.repeat_interleave(torch.repeat_interleave(block_values, factor, dim=-2), factor, dim=-1)

    if constraint == "softmax":
        logits = torch.log(torch.clamp(baseline, min=0.0) + 1e-3 * scale) + torch.clamp(correction, -15, 15)
        logits = logits - up(functional.max_pool2d(logits, factor))
        expo = torch.exp(logits) * (weights > 0)
        return expo * up(coarse / torch.clamp(_block_mean_torch(expo, weights, factor), min=1e-30))
    first_guess = baseline + scale * correction
    if constraint == "additive":
        return first_guess + up(coarse - _block_mean_torch(first_guess, weights, factor))
    if constraint == "multiplicative":
        positive = functional.softplus(first_guess / scale) * scale
        return positive * up(coarse / torch.clamp(_block_mean_torch(positive, weights, factor), min=1e-30))
    return first_guess


# ------------------------------------------------------------------ array helpers


def _fill_nearest(values):
    """Fill NaN cells of every 2-D slice with the nearest valid value (so the baseline has no holes)."""
    from scipy import ndimage

    values = np.array(values, dtype=np.float64)
    flat = values.reshape(-1, *values.shape[-2:])
    for index, field in enumerate(flat):
        invalid = np.isnan(field)
        if invalid.all():
            field[:] = 0.0
        elif invalid.any():
            nearest = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
            flat[index] = field[tuple(nearest)]
    return flat.reshape(values.shape)


def _as_grid(values, template):
    """A DataArray with the grid (coords, CRS) of ``template`` and any leading dims unnamed."""
    dims = tuple(f"dim_{i}" for i in range(values.ndim - 2)) + ("y", "x")
    out = xr.DataArray(values, dims=dims, coords={"y": template["y"].values, "x": template["x"].values})
    crs = grid_module.get_crs(template)
    return grid_module.set_crs(out, crs) if crs is not None else out


def _block_mean_np(values, row_weights, factor, min_valid=0.5):
    """NaN-aware block mean with per-row weights, as :func:`downscale.grid.block_mean` on plain arrays.

    ``row_weights`` come from :func:`downscale.grid.block_sum_weights`, so geographic grids are
    area-weighted here exactly as in the package's block mean.
    """
    *lead, ny, nx = values.shape
    blocks = np.asarray(values, dtype=np.float64).reshape(*lead, ny // factor, factor, nx // factor, factor)
    weights = np.asarray(row_weights, dtype=np.float64).reshape(ny // factor, factor, 1, 1)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks * weights, 0.0).sum(axis=(-3, -1))
    valid_weight = np.where(valid, weights, 0.0).sum(axis=(-3, -1))
    fraction = valid_weight / (weights.sum(axis=(-3, -1)) * factor)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / valid_weight
    return np.where((valid_weight > 0) & (fraction >= min_valid - 1e-12), mean, np.nan)


def _upsample_np(values, factor, method):
    """:func:`downscale.grid.upsample` on a plain array (index coordinates, no CRS needed)."""
    ny, nx = values.shape[-2:]
    dims = tuple(f"dim_{i}" for i in range(values.ndim - 2)) + ("y", "x")
    field = xr.DataArray(
        values, dims=dims, coords={"y": np.arange(ny, dtype=float), "x": np.arange(nx, dtype=float)}
    )
    return grid_module.upsample(field, factor, method).values


def _anomaly(values, row_weights, factor, method):
    """Covariates minus their block mean brought back with ``method``: what the baseline cannot see."""
    coarse_values = _block_mean_np(values, row_weights, factor, min_valid=1e-9)
    return values - _upsample_np(_fill_nearest(coarse_values), factor, method)


def _resolve_constraint(constraint, coarse):
    if constraint not in _CONSTRAINTS:
        raise ValueError(f"constraint must be one of {_CONSTRAINTS}, got {constraint!r}.")
    if constraint != "auto":
        return constraint
    attrs = coarse.attrs
    valid_min = attrs.get(
        "valid_min", attrs.get("valid_range", [None])[0] if "valid_range" in attrs else None
    )
    non_negative = attrs.get("standard_name") in NON_NEGATIVE_NAMES or (
        valid_min is not None and float(valid_min) >= 0
    )
    return "softmax" if non_negative else "additive"


# ---------------------------------------------------------------------- estimator


class UNetDownscaler(BaseEstimator):
    """Coherent UNet downscaler: coarse field + fine covariates -> fine field, trained supervised or by Wald.

    Has the estimator interface of :class:`downscale.Downscaler`: ``fit(coarse, X)``,
    ``predict(X, return_std=False)``, ``get_params`` and :func:`sklearn.base.clone`.
    See the module documentation for the channels, the constraint and the Wald protocol.

    Parameters
    ----------
    mode : {"wald", "supervised"}
        ``"wald"``: self-supervised on the coarse series alone; ``"supervised"``: from ``y_fine`` given to ``fit``.
    max_epochs : int
        Largest number of training epochs (one epoch draws as many random tiles as there are
        non-overlapping training tiles over all time steps).
    tile_size : int, optional
        Side of a training tile in blocks (cells of the lower-resolution field); default: at most 8, as
        large as the training area allows.
    batch_size : int
    base_channels, depth : int
        Width of the first level and number of down-sampling levels of the UNet. The per-pixel network
        has two hidden layers of ``2 * base_channels`` and ignores ``depth``.
    architecture : {"auto", "unet", "pixel"}
        ``"unet"``: the UNet (3 x 3 convolutions, pooling); ``"pixel"``: the per-pixel network (1 x 1
        layers); ``"auto"``: per pixel in Wald mode, where a 3 x 3 kernel spans another distance in
        training than in use (see the module notes), the UNet in supervised mode.
    learning_rate : float
        Adam learning rate.
    dropout : float
        Channel dropout in the inner levels; also used for Monte-Carlo standard deviations.
    constraint : {"auto", "additive", "multiplicative", "softmax", "none"}
        The coherence layer; ``"auto"`` is ``"softmax"`` for non-negative variables, else ``"additive"``.
        With ``"none"`` the prediction is not made coherent.
    upsample : {"bilinear", "nearest"}
        How the coarse field becomes the baseline channel.
    wald_factor : int, optional
        Degradation factor of the Wald protocol (default: largest that keeps 8 x 8 degraded cells, at most
        the real factor).
    n_mc : int
        Number of Monte-Carlo dropout samples for ``return_std``.
    patience : int
        Epochs without improvement of the validation loss before stopping.
    validation_fraction : float
        Fraction of the block columns (on the east side) held out for early stopping.
    bounds : (float or None, float or None), optional
        Physical range enforced by the final float64 correction (e.g. ``(0, 0.45)`` for soil moisture);
        default ``(0, None)`` for the multiplicative and softmax constraints, ``(None, None)`` otherwise.
    seed : int
        Seeds weight initialisation, tile sampling and dropout: the same seed gives the same model.
    verbose : bool
        Show a progress bar and log the losses of every epoch (``logging`` at INFO level).
    device : str
        Torch device.
    n_threads : int, optional
        Torch CPU threads while fitting and predicting (restored afterwards); default: torch's setting.

    Attributes
    ----------
    constraint_ : str
        The constraint used.
    factor_ : int
        Nesting factor between the coarse field and the fine covariates.
    wald_factor_ : int or None
        Degradation factor used in Wald mode.
    anomaly_used_ : list of bool
        Per covariate, whether its anomaly is an input channel (Wald mode: its spread on the fine grid is
        within ``MAX_SPREAD_RATIO`` of its spread at the training scale; supervised mode: all).
    fine_spread_, training_spread_ : list of float
        Wald mode: standard deviation of every covariate's anomaly on the fine grid and at the training scale.
    history_ : list of dict
        ``epoch``, ``train_loss`` and ``validation_loss`` (mean squared error in units of the coarse
        field's standard deviation squared) per epoch.
    best_epoch_ : int
        Epoch whose weights are kept (lowest validation loss); 0 when no epoch beat the untrained network.

    Examples
    --------
    >>> import downscale as ds
    >>> from downscale.models.unet import UNetDownscaler
    >>> scene = ds.datasets.synthetic_scene("precipitation", n_times=8, shape=(160, 160), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, features=["elevation"])
    >>> model = UNetDownscaler(max_epochs=2, base_channels=4, depth=1, n_threads=1).fit(scene.coarse, X)
    >>> fine = model.predict(X)
    >>> bool((fine >= 0).all()), fine.shape
    (True, (8, 160, 160))
    >>> back = ds.grid.block_mean(fine, 10)
    >>> bool(abs(back - scene.coarse).max() < 1e-9 * float(scene.coarse.max()))
    True
    """

    def __init__(
        self,
        mode="wald",
        max_epochs=30,
        tile_size=None,
        batch_size=16,
        base_channels=16,
        depth=3,
        architecture="auto",
        learning_rate=3e-3,
        dropout=0.1,
        constraint="auto",
        upsample="bilinear",
        wald_factor=None,
        n_mc=20,
        patience=5,
        validation_fraction=0.2,
        bounds=None,
        seed=0,
        verbose=False,
        device="cpu",
        n_threads=None,
    ):
        _import_torch()
        self.mode = mode
        self.max_epochs = max_epochs
        self.tile_size = tile_size
        self.batch_size = batch_size
        self.base_channels = base_channels
        self.depth = depth
        self.architecture = architecture
        self.learning_rate = learning_rate
        self.dropout = dropout
        self.constraint = constraint
        self.upsample = upsample
        self.wald_factor = wald_factor
        self.n_mc = n_mc
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.bounds = bounds
        self.seed = seed
        self.verbose = verbose
        self.device = device
        self.n_threads = n_threads

    # ------------------------------------------------------------ checks

    def _check_params(self):
        if self.mode not in ("wald", "supervised"):
            raise ValueError(f"mode must be 'wald' or 'supervised', got {self.mode!r}.")
        if self.upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {self.upsample!r}.")
        if self.architecture not in ("auto", "unet", "pixel"):
            raise ValueError(f"architecture must be 'auto', 'unet' or 'pixel', got {self.architecture!r}.")
        for name in ("max_epochs", "batch_size", "base_channels", "n_mc", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
        if not isinstance(self.depth, (int, np.integer)) or self.depth < 0:
            raise ValueError(f"depth must be a whole number >= 0, got {self.depth!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}.")

    @staticmethod
    def _check_coarse(coarse):
        if not isinstance(coarse, xr.DataArray):
            raise TypeError(
                f"coarse must be an xarray DataArray (time?, y, x), got {type(coarse).__name__}. "
                f"Select the variable, e.g. `dataset['precipitation']`."
            )
        grid_module.check_grid(coarse, name="coarse")
        extra = [d for d in coarse.dims if d not in ("time", "y", "x")]
        if extra or coarse.ndim > 3:
            raise ValueError(
                f"coarse must have dims (y, x) or (time, y, x); it has {coarse.dims}. "
                f"Select or stack the other dimensions first."
            )
        return coarse.transpose(..., "y", "x")

    @staticmethod
    def _check_covariates(X, names=None):
        if isinstance(X, xr.DataArray):
            X = X.to_dataset(name=X.name or "covariate")
        if not isinstance(X, xr.Dataset):
            raise TypeError(
                f"X must be an xarray Dataset of fine covariates (e.g. from downscale.covariates.build), "
                f"got {type(X).__name__}."
            )
        grid_module.check_grid(X, name="X")
        if names is None:
            names = [n for n, da in X.data_vars.items() if {"y", "x"} <= set(da.dims)]
            if not names:
                raise ValueError("X has no variables with dims ('y', 'x'); give at least one fine covariate.")
        else:
            missing = [n for n in names if n not in X.data_vars]
            if missing:
                raise ValueError(
                    f"X is missing the covariates {missing} that the model was fitted with "
                    f"(it has {list(X.data_vars)}). Give the same covariates as at fit, e.g. from "
                    f"`downscale.covariates.build` with the same arguments."
                )
        for name in names:
            extra = [d for d in X[name].dims if d not in ("time", "y", "x")]
            if extra:
                raise ValueError(
                    f"Covariate '{name}' has dims {X[name].dims}; only (time?, y, x) is supported."
                )
        return X, list(names)

    def _covariate_stack(self, X, names, coarse, time_index):
        """Covariates at one time step as a (V, ny, nx) float64 array."""
        layers = []
        for name in names:
            da = X[name]
            if "time" in da.dims:
                if "time" not in coarse.dims:
                    da = da.isel(time=0) if da.sizes["time"] == 1 else None
                    if da is None:
                        raise ValueError(
                            f"Covariate '{name}' has a time dimension but coarse has none; select one time step."
                        )
                else:
                    time = coarse["time"].values[time_index]
                    if time not in da["time"].values:
                        raise ValueError(
                            f"Covariate '{name}' has no time step {time}, which the coarse field has. "
                            f"Give covariates for every time step or without a time dimension."
                        )
                    da = da.sel(time=time)
            layers.append(np.asarray(da.transpose("y", "x").values, dtype=np.float64))
        return np.stack(layers)

    @staticmethod
    def _time_varying(X, names):
        return any("time" in X[n].dims for n in names)

    # --------------------------------------------------------- channels

    def _channels(self, baseline, covariates, anomalies):
        """Normalised input channels (C, ny, nx) as float32; NaN -> 0 (the mean)."""
        if self.baseline_channel_:
            parts = [baseline[None], covariates, anomalies]
        else:
            parts = [anomalies[np.asarray(self.anomaly_used_, dtype=bool)]]
        stack = np.concatenate(parts)
        if len(stack) == 0:  # no anomaly passed the spread check: one empty channel, never trained on
            return np.zeros((1,) + baseline.shape, dtype=np.float32)
        normalised = (stack - self.channel_mean_[:, None, None]) / self.channel_std_[:, None, None]
        # Fine covariates reach values never seen on the coarse training grid: do not extrapolate far.
        normalised = np.clip(normalised, -CHANNEL_CLIP, CHANNEL_CLIP)
        return np.nan_to_num(normalised, nan=0.0).astype(np.float32)

    def _pair_arrays(self, coarse_values, covariates, anomalies, row_weights, factor, valid_mask):
        """Baseline, anomalies, weights and constraint values for one (coarse, fine) pair."""
        filled = _fill_nearest(coarse_values)
        baseline = _upsample_np(filled, factor, self.upsample)
        if anomalies is None:
            anomalies = _anomaly(covariates, row_weights, factor, self.upsample)
        valid = np.all(np.isfinite(covariates), axis=0)
        if valid_mask is not None:
            valid &= valid_mask
        weights = np.where(valid, row_weights[:, None], 0.0)
        return baseline, anomalies, weights, filled

    # -------------------------------------------------------------- fit

    def fit(self, coarse, X, y_fine=None, mask=None):
        """Train the network.

        Parameters
        ----------
        coarse : xarray.DataArray
            Coarse field ``(time?, y, x)``; ``X`` must nest in its grid.
        X : xarray.Dataset
            Fine covariates ``(time?, y, x)``, e.g. from :func:`downscale.covariates.build`.
        y_fine : xarray.DataArray, optional
            Fine training fields ``(time?, y, x)`` on the grid of ``X``, paired with ``coarse``
            (``mode="supervised"`` only).
        mask : xarray.DataArray of bool, optional
            Fine pixels where the variable is defined (e.g. land for LST); the output is NaN elsewhere and
            block means are taken over the masked pixels only, as for the coarse field itself.

        Returns
        -------
        self
        """
        torch = _import_torch()
        self._check_params()
        coarse = self._check_coarse(coarse)
        X, names = self._check_covariates(X)
        factor = grid_module.nesting_factor(coarse, X)
        mask_values = self._check_mask(mask, X)
        if self.mode == "supervised":
            if y_fine is None:
                raise ValueError(
                    "mode='supervised' needs fine training fields: fit(coarse, X, y_fine=...). "
                    "Without fine truth use mode='wald'."
                )
            y_fine = self._check_coarse(y_fine)
            if grid_module.nesting_factor(coarse, y_fine) != factor or y_fine.shape[-2:] != (
                X.sizes["y"],
                X.sizes["x"],
            ):
                raise ValueError("y_fine must be on the grid of X.")
            if y_fine.shape[:-2] != coarse.shape[:-2]:
                raise ValueError(
                    f"y_fine has {y_fine.shape[:-2] or 'no'} time steps, coarse has {coarse.shape[:-2] or 'no'}; "
                    f"they must be paired one to one."
                )
        elif y_fine is not None:
            raise ValueError("y_fine is only used with mode='supervised'; drop it or set mode='supervised'.")

        self.constraint_ = _resolve_constraint(self.constraint, coarse)
        self.factor_ = factor
        self.covariate_names_ = names
        self.coarse_ = coarse
        self.mask_ = mask_values
        self.n_times_ = 1 if coarse.ndim == 2 else coarse.shape[0]
        self.bounds_ = self._resolve_bounds()
        # In Wald mode the baseline's shape is seen at another scale in training than in use (see the notes).
        self.baseline_channel_ = self.mode == "supervised"
        # ... and so is every spatial pattern: in Wald mode the network is per pixel (see the notes).
        self.pointwise_ = self.architecture == "pixel" or (
            self.architecture == "auto" and self.mode == "wald"
        )

        with self._threads(torch):
            examples = self._training_examples(coarse, X, names, factor, mask_values, y_fine)
            self._train(torch, examples)
        return self

    def _resolve_bounds(self):
        if self.bounds is not None:
            low, high = self.bounds
            return (None if low is None else float(low), None if high is None else float(high))
        return (0.0, None) if self.constraint_ in ("softmax", "multiplicative") else (None, None)

    @staticmethod
    def _check_mask(mask, X):
        if mask is None:
            return None
        if not isinstance(mask, xr.DataArray) or mask.dims != ("y", "x"):
            raise ValueError("mask must be a boolean DataArray with dims ('y', 'x') on the grid of X.")
        if mask.shape != (X.sizes["y"], X.sizes["x"]):
            raise ValueError(
                f"mask has shape {mask.shape}, X has {(X.sizes['y'], X.sizes['x'])}; give the mask on the grid of X."
            )
        return np.asarray(mask.values, dtype=bool)

    def _threads(self, torch):
        estimator = self

        class _Threads:
            def __enter__(self):
                self.previous = torch.get_num_threads()
                if estimator.n_threads is not None:
                    torch.set_num_threads(int(estimator.n_threads))

            def __exit__(self, *exc):
                torch.set_num_threads(self.previous)

        return _Threads()

    def _training_examples(self, coarse, X, names, factor, mask_values, y_fine):
        """Per time step: input arrays and targets on the training grid, at the training factor."""
        times = range(self.n_times_)
        coarse_values = coarse.values.reshape(-1, *coarse.shape[-2:])
        if self.mode == "wald":
            ny, nx = coarse.shape[-2:]
            k = self.wald_factor
            if k is None:
                k = min(factor, min(ny, nx) // MIN_WALD_CELLS)
                if k < 2:
                    raise ValueError(
                        f"The Wald protocol needs a degradation factor >= 2 that leaves {MIN_WALD_CELLS} x "
                        f"{MIN_WALD_CELLS} degraded cells, but the coarse grid has only {ny} x {nx} cells. "
                        f"Pass wald_factor=2 explicitly, use a larger coarse domain, or mode='supervised'."
                    )
            elif not isinstance(k, (int, np.integer)) or k < 2:
                raise ValueError(f"wald_factor must be a whole number >= 2, got {k!r}.")
            if min(ny, nx) // k < 2:
                raise ValueError(
                    f"wald_factor={k} leaves fewer than 2 x 2 degraded cells from the {ny} x {nx} coarse grid; "
                    f"use a smaller wald_factor."
                )
            self.wald_factor_ = int(k)
            ny_c, nx_c = ny - ny % k, nx - nx % k
            target_grid = coarse.isel(y=slice(0, ny_c), x=slice(0, nx_c))
            train_factor = k
            training_weights = grid_module.block_sum_weights(target_grid, k)
            fine_weights = grid_module.block_sum_weights(X, factor)
            aggregated_cache = {}

            def covariates_at(t):
                # Covariates aggregated to the coarse grid, the "fine" grid of the Wald pairs.
                key = t if self._time_varying(X, names) else 0
                if key not in aggregated_cache:
                    stack = self._covariate_stack(X, names, coarse, t)
                    if mask_values is not None:
                        stack = np.where(mask_values, stack, np.nan)
                    aggregated_cache[key] = _block_mean_np(stack, fine_weights, factor)[:, :ny_c, :nx_c]
                return aggregated_cache[key]

            targets = [coarse_values[t, :ny_c, :nx_c] for t in times]
            lows = [_block_mean_np(target, training_weights, k) for target in targets]
            masks = [np.isfinite(target) for target in targets]
        else:
            self.wald_factor_ = None
            train_factor = factor
            training_weights = grid_module.block_sum_weights(X, factor)
            fine_values = y_fine.values.reshape(-1, *y_fine.shape[-2:])
            stack_cache = {}

            def covariates_at(t):
                key = t if self._time_varying(X, names) else 0
                if key not in stack_cache:
                    stack_cache[key] = self._covariate_stack(X, names, coarse, t)
                return stack_cache[key]

            targets = [np.asarray(fine_values[t], dtype=np.float64) for t in times]
            masks = [
                np.isfinite(target) if mask_values is None else np.isfinite(target) & mask_values
                for target in targets
            ]
            lows = [coarse_values[t] for t in times]

        self.train_factor_ = int(train_factor)
        examples = []
        anomaly_cache = {}
        for t in times:
            covariates = covariates_at(t)
            if id(covariates) not in anomaly_cache:
                anomaly_cache[id(covariates)] = _anomaly(
                    covariates, training_weights, train_factor, self.upsample
                )
            baseline, anomalies, weights, filled = self._pair_arrays(
                lows[t], covariates, anomaly_cache[id(covariates)], training_weights, train_factor, masks[t]
            )
            examples.append(
                {
                    "baseline": baseline,
                    "covariates": covariates,
                    "anomalies": anomalies,
                    "weights": weights,
                    "coarse": filled,
                    "target": targets[t],
                    "valid": masks[t] & (weights > 0),
                }
            )
        # Normalisation statistics from the training data, stored in the model.
        all_targets = np.concatenate([e["target"][e["valid"]] for e in examples])
        if all_targets.size == 0:
            raise ValueError("coarse has no valid (finite) values to train on.")
        self.target_mean_ = float(all_targets.mean())
        self.target_std_ = float(all_targets.std()) or 1.0
        n_cov = len(names)
        means, stds = ([self.target_mean_], [self.target_std_]) if self.baseline_channel_ else ([], [])
        for part in ("covariates", "anomalies"):
            for v in range(n_cov):
                values = np.concatenate([e[part][v][np.isfinite(e[part][v])] for e in examples])
                std = float(values.std()) if values.size else 1.0
                means.append(float(values.mean()) if values.size else 0.0)
                stds.append(std if std > 1e-12 else 1.0)
        if not self.baseline_channel_:
            # Wald mode: the anomalies only (see the module notes). They are normalised with their own
            # spread: scaling them with their covariate's instead (small training values, large weights
            # to learn) was worse, RMSE / coherent bilinear on the LST test scene 0.90 against 0.78.
            means, stds = means[n_cov:], stds[n_cov:]
            used = self._scale_similar(X, names, coarse, factor, mask_values, np.array(stds))
            self.anomaly_used_ = [bool(u) for u in used]
            means = [m for m, u in zip(means, used, strict=True) if u]
            stds = [d for d, u in zip(stds, used, strict=True) if u]
        else:
            self.anomaly_used_ = [True] * n_cov
        self.channel_mean_ = np.array(means)
        self.channel_std_ = np.array(stds)
        return examples

    def _scale_similar(self, X, names, coarse, factor, mask_values, training_spread):
        """Which covariates' anomalies spread on the fine grid about as much as at the training scale.

        ``fine_spread_`` and ``training_spread_`` are stored; a covariate is kept when their ratio is
        within ``[1 / MAX_SPREAD_RATIO, MAX_SPREAD_RATIO]``.
        """
        stack = self._covariate_stack(X, names, coarse, 0)
        anomalies = _anomaly(stack, grid_module.block_sum_weights(X, factor), factor, self.upsample)
        valid = np.all(np.isfinite(anomalies), axis=0)
        if mask_values is not None:
            valid &= mask_values
        fine_spread = anomalies[:, valid].std(axis=1) if valid.any() else np.zeros(len(names))
        self.fine_spread_ = [float(v) for v in fine_spread]
        self.training_spread_ = [float(v) for v in training_spread]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = fine_spread / training_spread
        return (fine_spread > 0) & (ratio <= MAX_SPREAD_RATIO) & (ratio >= 1 / MAX_SPREAD_RATIO)

    def _train(self, torch, examples):
        block = self.train_factor_
        ny, nx = examples[0]["target"].shape
        n_blocks_y, n_blocks_x = ny // block, nx // block
        n_validation = max(1, int(round(self.validation_fraction * n_blocks_x)))
        n_train_x = n_blocks_x - n_validation
        tile = self.tile_size
        if tile is None:
            tile = max(1, min(4, n_blocks_y, n_train_x))
        if not isinstance(tile, (int, np.integer)) or tile < 1:
            raise ValueError(f"tile_size must be a positive whole number of blocks, got {tile!r}.")
        n_tiles_per_time = (n_blocks_y // tile) * (max(n_train_x, 0) // tile)
        n_tiles = n_tiles_per_time * len(examples)
        if n_train_x < 1 or n_tiles < MIN_TRAINING_TILES:
            raise ValueError(
                f"Too few training tiles: {len(examples)} time step(s) x {n_tiles_per_time} tile(s) of "
                f"{tile} x {tile} blocks per step = {n_tiles}, at least {MIN_TRAINING_TILES} are needed "
                f"(the training area is {n_blocks_y} x {max(n_train_x, 0)} blocks of {block} cells, after "
                f"holding out {n_validation} block column(s) for validation). Give more time steps, a "
                f"larger domain or a smaller tile_size."
            )
        self.tile_size_ = int(tile)
        n_channels = max(1, len(self.channel_mean_))
        self.n_channels_ = n_channels
        max_epochs = self.max_epochs
        if len(self.channel_mean_) == 0:
            max_epochs = 0
            warnings.warn(
                f"No covariate's within-block anomaly spreads on the fine grid within a factor "
                f"{MAX_SPREAD_RATIO:g} of its spread at the Wald training scale, so nothing learnt there "
                f"would transfer: the model predicts the coherent {self.upsample} baseline.",
                stacklevel=3,
            )

        def tensors(example, rows, cols):
            channels = self._channels(
                example["baseline"][rows, cols],
                example["covariates"][:, rows, cols],
                example["anomalies"][:, rows, cols],
            )
            return (
                channels,
                example["baseline"][rows, cols].astype(np.float32),
                example["coarse"][
                    rows.start // block : rows.stop // block, cols.start // block : cols.stop // block
                ].astype(np.float32),
                example["weights"][rows, cols].astype(np.float32),
                np.nan_to_num(example["target"][rows, cols]).astype(np.float32),
                example["valid"][rows, cols].astype(np.float32),
            )

        def stack(items):
            arrays = [np.stack(parts) for parts in zip(*items, strict=True)]
            return [torch.from_numpy(a if a.ndim == 4 else a[:, None]).to(self.device) for a in arrays]

        train_cols = slice(0, n_train_x * block)
        validation_cols = slice(n_train_x * block, n_blocks_x * block)
        all_rows = slice(0, n_blocks_y * block)
        validation = stack([tensors(e, all_rows, validation_cols) for e in examples])
        # Keep the training area of every time step in memory; tiles are cut from it.
        train_area = [tensors(e, all_rows, train_cols) for e in examples]
        train_area = stack(train_area)

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        network = _network_classes()["UNet"](
            n_channels, self.base_channels, self.depth, self.dropout, pointwise=self.pointwise_
        ).to(self.device)
        optimizer = torch.optim.Adam(network.parameters(), lr=self.learning_rate)
        self.history_ = []
        # Epoch 0, the untrained network, is the coherent baseline: training must beat it to be kept.
        network.eval()
        with torch.no_grad():
            best_loss = float(self._loss(network, validation))
        best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        best_epoch, stale = 0, 0
        size = tile * block
        progress = None
        if self.verbose:
            from tqdm.auto import tqdm

            progress = tqdm(total=max_epochs, desc="UNetDownscaler", unit="epoch")
        for epoch in range(1, max_epochs + 1):
            network.train()
            total, count = 0.0, 0
            order = rng.integers(0, len(examples), n_tiles)
            row_offsets = rng.integers(0, n_blocks_y - tile + 1, n_tiles) * block
            col_offsets = rng.integers(0, n_train_x - tile + 1, n_tiles) * block
            for start in range(0, n_tiles, self.batch_size):
                index = slice(start, start + self.batch_size)
                batch = [[] for _ in train_area]
                for t, r, c in zip(order[index], row_offsets[index], col_offsets[index], strict=True):
                    for number, (part, tensor) in enumerate(zip(batch, train_area, strict=True)):
                        b = block if number == 2 else 1  # the constraint values live on the block grid
                        part.append(tensor[t, :, r // b : (r + size) // b, c // b : (c + size) // b])
                batch = [torch.stack(part) for part in batch]
                loss = self._loss(network, batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch[0])
                count += len(batch[0])
            network.eval()
            with torch.no_grad():
                validation_loss = float(self._loss(network, validation))
            train_loss = total / count
            self.history_.append(
                {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss}
            )
            if self.verbose:
                logger.info(
                    "epoch %d: train loss %.5f, validation loss %.5f", epoch, train_loss, validation_loss
                )
                progress.update(1)
                progress.set_postfix(train=f"{train_loss:.4f}", validation=f"{validation_loss:.4f}")
            if validation_loss < best_loss - 1e-7:
                best_loss, best_epoch, stale = validation_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if progress is not None:
            progress.close()
        network.load_state_dict(best_state)
        network.eval()
        if best_epoch == 0 and max_epochs > 0:
            warnings.warn(
                f"No training epoch improved on the untrained network on the validation strip (loss "
                f"{best_loss:.4g}): the model predicts the coherent {self.upsample} baseline and return_std "
                f"gives zeros. Try more time steps, another learning_rate or mode='supervised'.",
                stacklevel=3,
            )
        self.network_ = network
        self.best_epoch_ = best_epoch

    def _forward(self, network, channels, baseline, coarse, weights, factor):
        correction = network(channels)
        return _constrain(correction, baseline, coarse, weights, factor, self.constraint_, self.target_std_)

    def _loss(self, network, batch):
        channels, baseline, coarse, weights, target, valid = batch
        output = self._forward(network, channels, baseline, coarse, weights, self.train_factor_)
        error = (output - target) / self.target_std_ * valid
        return (error**2).sum() / valid.sum().clamp(min=1.0)

    # ---------------------------------------------------------- predict

    def predict(self, X, return_std=False, coarse=None, mask=None):
        """Downscale the coarse field onto the fine grid of ``X``.

        Parameters
        ----------
        X : xarray.Dataset
            The fine covariates, with (at least) the variables the model was fitted with.
        return_std : bool
            Also return the standard deviation over ``n_mc`` Monte-Carlo dropout samples.
        coarse : xarray.DataArray, optional
            A coarse field to downscale (default: the one given to ``fit``); same factor as at fit.
            NaN coarse cells are filled with the nearest valid value for the baseline; their blocks are
            predicted but not constrained.
        mask : xarray.DataArray of bool, optional
            Fine pixels to predict (default: the mask given to ``fit``).

        Returns
        -------
        fine : xarray.DataArray
            ``(time?, y, x)`` on the grid of ``X``; block means equal the coarse field where it is valid.
        std : xarray.DataArray, only with ``return_std``
        """
        torch = _import_torch()
        self._check_fitted()
        coarse = self.coarse_ if coarse is None else self._check_coarse(coarse)
        X, names = self._check_covariates(X, self.covariate_names_)
        factor = grid_module.nesting_factor(coarse, X)
        if factor != self.factor_:
            raise ValueError(
                f"X nests in the coarse grid with factor {factor}, but the model was fitted at factor "
                f"{self.factor_}. Give covariates on the fine grid used at fit (or refit the model)."
            )
        mask_values = self.mask_ if mask is None else self._check_mask(mask, X)
        if mask_values is not None and mask_values.shape != (X.sizes["y"], X.sizes["x"]):
            raise ValueError("The mask given at fit is on another grid than X; pass mask= to predict.")
        if return_std and self.dropout == 0:
            raise ValueError("return_std needs Monte-Carlo dropout: refit with dropout > 0.")
        coarse_values = coarse.values.reshape(-1, *coarse.shape[-2:])
        n_samples = self.n_mc if return_std else 1
        means, stds = [], []
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        with self._threads(torch):
            row_weights = grid_module.block_sum_weights(X, factor)
            static = None
            if not self._time_varying(X, names):
                static = self._covariate_stack(X, names, coarse, 0)
                static_anomalies = _anomaly(static, row_weights, factor, self.upsample)
            for t in range(coarse_values.shape[0]):
                if static is not None:
                    covariates, anomalies = static, static_anomalies
                else:
                    covariates, anomalies = self._covariate_stack(X, names, coarse, t), None
                baseline, anomalies, weights, filled = self._pair_arrays(
                    coarse_values[t], covariates, anomalies, row_weights, factor, mask_values
                )
                channels = torch.from_numpy(self._channels(baseline, covariates, anomalies))[None].to(
                    self.device
                )
                inputs = [
                    torch.from_numpy(a.astype(np.float32))[None, None].to(self.device)
                    for a in (baseline, filled, weights)
                ]
                samples = []
                self.network_.train(return_std)
                with torch.no_grad():
                    for _ in range(n_samples):
                        output = self._forward(self.network_, channels, *inputs, factor)
                        samples.append(output[0, 0].double().cpu().numpy())
                self.network_.eval()
                samples = np.stack(samples)
                samples[:, weights == 0] = np.nan
                samples = self._exact_coherence(samples, coarse_values[t], coarse, X, factor)
                means.append(samples.mean(axis=0))
                stds.append(samples.std(axis=0))
        torch.random.set_rng_state(generator_state)
        shape = coarse.shape[:-2] + (X.sizes["y"], X.sizes["x"])
        fine = self._wrap(np.stack(means).reshape(shape), coarse, X)
        if not return_std:
            return fine
        std = self._wrap(np.stack(stds).reshape(shape), coarse, X)
        std.name = f"{fine.name}_std" if fine.name else "std"
        std.attrs = {k: v for k, v in fine.attrs.items() if k in ("units",)}
        std.attrs["long_name"] = "standard deviation of Monte-Carlo dropout samples"
        return fine, std

    def _exact_coherence(self, samples, coarse_values, coarse, X, factor):
        """Re-apply the constraint in float64 with grid.block_mean's weights (coherence to float64 rounding)."""
        if self.constraint_ == "none":
            return samples
        from .transforms import coherent_correction

        low, high = self.bounds_
        if low is not None:
            samples = np.maximum(samples, low)
        if high is not None:
            samples = np.minimum(samples, high)
        fine = _as_grid(samples, X)
        target = _as_grid(np.broadcast_to(coarse_values, samples.shape[:1] + coarse_values.shape), coarse)
        return coherent_correction(fine, target, bounds=self.bounds_).values

    def _wrap(self, values, coarse, X):
        dims = coarse.dims[:-2] + ("y", "x")
        coords = {"y": X["y"], "x": X["x"]}
        if "time" in coarse.dims:
            coords["time"] = coarse["time"]
        out = xr.DataArray(values, dims=dims, coords=coords, name=coarse.name, attrs=dict(coarse.attrs))
        out.attrs["downscaling_method"] = (
            f"UNetDownscaler ({self.mode}, constraint {self.constraint_}, factor {self.factor_})"
        )
        crs = grid_module.get_crs(X)
        return grid_module.set_crs(out, crs) if crs is not None else out

    def _check_fitted(self):
        if not hasattr(self, "network_"):
            raise RuntimeError("This UNetDownscaler is not fitted yet; call fit(coarse, X) first.")

    # ------------------------------------------------------- save / load

    def save(self, path):
        """Save weights, configuration, normalisation and the training coarse field to one ``.pt`` file.

        The file holds only tensors and plain Python values, so :meth:`load` reads it with
        ``torch.load(..., weights_only=True)`` (no pickled objects).
        """
        torch = _import_torch()
        self._check_fitted()
        coarse = self.coarse_
        state = {
            "format": SAVE_FORMAT,
            "version": SAVE_VERSION,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
            "fitted": {
                "constraint_": self.constraint_,
                "factor_": int(self.factor_),
                "wald_factor_": None if self.wald_factor_ is None else int(self.wald_factor_),
                "train_factor_": int(self.train_factor_),
                "tile_size_": int(self.tile_size_),
                "covariate_names_": list(self.covariate_names_),
                "n_times_": int(self.n_times_),
                "n_channels_": int(self.n_channels_),
                "baseline_channel_": bool(self.baseline_channel_),
                "anomaly_used_": list(self.anomaly_used_),
                "pointwise_": bool(self.pointwise_),
                "fine_spread_": list(getattr(self, "fine_spread_", [])),
                "training_spread_": list(getattr(self, "training_spread_", [])),
                "bounds_": list(self.bounds_),
                "target_mean_": self.target_mean_,
                "target_std_": self.target_std_,
                "best_epoch_": int(self.best_epoch_),
                "history_": [dict(h) for h in self.history_],
            },
            "channel_mean": torch.from_numpy(self.channel_mean_),
            "channel_std": torch.from_numpy(self.channel_std_),
            "mask": None if self.mask_ is None else torch.from_numpy(self.mask_),
            "coarse": {
                "values": torch.from_numpy(np.ascontiguousarray(coarse.values, dtype=np.float64)),
                "dims": list(coarse.dims),
                "y": torch.from_numpy(np.array(coarse["y"].values, dtype=np.float64)),
                "x": torch.from_numpy(np.array(coarse["x"].values, dtype=np.float64)),
                "coordinate_attrs": {
                    axis: {k: _plain(v) for k, v in coarse[axis].attrs.items() if _plain(v) is not None}
                    for axis in ("y", "x")
                },
                "time": self._time_to_save(coarse),
                "name": coarse.name,
                "attrs": {k: _plain(v) for k, v in coarse.attrs.items() if _plain(v) is not None},
                "crs": None if grid_module.get_crs(coarse) is None else grid_module.get_crs(coarse).to_wkt(),
            },
            "weights": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
        }
        torch.save(state, path)

    @staticmethod
    def _time_to_save(coarse):
        if "time" not in coarse.dims:
            return None
        torch = _import_torch()
        values = coarse["time"].values
        if np.issubdtype(values.dtype, np.datetime64):
            return {
                "kind": "datetime64[ns]",
                "values": torch.from_numpy(values.astype("datetime64[ns]").astype(np.int64)),
            }
        return {"kind": "float", "values": torch.from_numpy(values.astype(np.float64))}

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save` (``torch.load`` with ``weights_only=True``)."""
        torch = _import_torch()
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path} is not a file written by UNetDownscaler.save.")
        if state["version"] > SAVE_VERSION:
            raise ValueError(
                f"{path} was written by a newer version of downscale (format {state['version']}); upgrade downscale."
            )
        params = dict(state["params"])
        if params.get("bounds") is not None:
            params["bounds"] = tuple(params["bounds"])
        model = cls(**params)
        for key, value in state["fitted"].items():
            setattr(model, key, value)
        model.bounds_ = tuple(model.bounds_)
        if not hasattr(model, "pointwise_"):  # files written before the per-pixel Wald network
            model.pointwise_ = False
        if not hasattr(model, "anomaly_used_"):  # files written before the spread check kept every anomaly
            model.anomaly_used_ = [True] * len(model.covariate_names_)
        model.channel_mean_ = state["channel_mean"].numpy()
        model.channel_std_ = state["channel_std"].numpy()
        model.mask_ = None if state["mask"] is None else state["mask"].numpy()
        saved = state["coarse"]
        coords = {"y": saved["y"].numpy(), "x": saved["x"].numpy()}
        if saved["time"] is not None:
            values = saved["time"]["values"].numpy()
            coords["time"] = (
                values.astype("datetime64[ns]") if saved["time"]["kind"] == "datetime64[ns]" else values
            )
        coarse = xr.DataArray(
            saved["values"].numpy(),
            dims=tuple(saved["dims"]),
            coords=coords,
            name=saved["name"],
            attrs=saved["attrs"],
        )
        for axis, attrs in saved["coordinate_attrs"].items():
            coarse[axis].attrs.update(attrs)
        if saved["crs"] is not None:
            coarse = grid_module.set_crs(coarse, saved["crs"])
        model.coarse_ = coarse
        network = _network_classes()["UNet"](
            model.n_channels_, model.base_channels, model.depth, model.dropout, pointwise=model.pointwise_
        )
        network.load_state_dict(state["weights"])
        network.to(model.device).eval()
        model.network_ = network
        return model


def _plain(value):
    """``value`` as a plain Python value that ``torch.load(weights_only=True)`` accepts, or None."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        items = (
            [_plain(v) for v in np.asarray(value).tolist()]
            if isinstance(value, np.ndarray)
            else [_plain(v) for v in value]
        )
        return items if all(v is not None for v in items) else None
    warnings.warn(f"Attribute value {value!r} is not saved (not a plain value).", stacklevel=3)
    return None
