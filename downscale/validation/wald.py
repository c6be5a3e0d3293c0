"""The Wald protocol: skill of a downscaling method without any fine-scale truth.

Wald et al. (1997) judge a resolution-enhancement method one scale up: the
coarse field is degraded by a factor ``k`` (block means of ``k x k`` cells),
the method downscales the degraded field back onto the coarse grid, and the
result is scored against the original coarse field, which is a truth at that
scale. For the downscaler, the coarse grid then plays the fine grid: the fine
covariates are aggregated onto it (:func:`downscale.covariates.aggregate`) and
the degraded field is the coarse target. The scores are compared with those
of bilinear interpolation of the degraded field, the baseline a downscaling
must beat.

The protocol assumes that what the method gains from ``k x`` coarser to
coarse it also gains from coarse to fine (scale invariance); it is an
indication, not a proof, and needs enough coarse cells: at least 4 x 4
degraded cells (and the model's own minimum, e.g. 10 valid cells for
residual kriging).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .. import grid as grid_module
from .crossval import score_table

__all__ = ["WaldResult", "wald_score"]

#: Fewest degraded cells along each axis.
MIN_DEGRADED_CELLS = 4


@dataclass
class WaldResult:
    """What :func:`wald_score` returns.

    Attributes
    ----------
    scores : pandas.DataFrame
        Rows ``downscaled`` and ``bilinear``; columns ``n`` and rmse, mae, bias, r, ubrmse, kge, nse
        against the original coarse field.
    prediction : xarray.DataArray
        The degraded field downscaled back onto the coarse grid.
    baseline : xarray.DataArray
        Bilinear interpolation of the degraded field onto the coarse grid.
    degraded : xarray.DataArray
        The coarse field averaged over ``factor x factor`` cells.
    factor : int
    """

    scores: pd.DataFrame
    prediction: xr.DataArray
    baseline: xr.DataArray
    degraded: xr.DataArray
    factor: int

    @property
    def gain(self) -> float:
        """RMSE skill over bilinear interpolation: ``1 - rmse_downscaled / rmse_bilinear`` (> 0 is better)."""
        base = self.scores.loc["bilinear", "rmse"]
        return float(1 - self.scores.loc["downscaled", "rmse"] / base) if base > 0 else np.nan

    def __getitem__(self, key):
        return getattr(self, key)

    def __repr__(self):
        rmse = self.scores["rmse"]
        return (
            f"<WaldResult factor {self.factor}: rmse downscaled {rmse['downscaled']:.4g}, "
            f"bilinear {rmse['bilinear']:.4g}, gain {self.gain:.3f}>"
        )


def default_factor(coarse, fine_factor=None) -> int:
    """The degradation factor used when none is given.

    The same factor as the real downscaling (``fine_factor``) when the coarse grid is large
    enough, otherwise the largest one that leaves at least 4 degraded cells along each axis.

    Examples
    --------
    >>> import downscale as ds
    >>> default_factor(ds.grid.make_grid((20, 30), 25_000.0), fine_factor=25)
    5
    """
    ny, nx = coarse.sizes["y"], coarse.sizes["x"]
    largest = min(ny, nx) // MIN_DEGRADED_CELLS
    if largest < 2:
        raise ValueError(
            f"The coarse grid has {ny} x {nx} cells; the Wald protocol needs at least "
            f"{2 * MIN_DEGRADED_CELLS} x {2 * MIN_DEGRADED_CELLS} so that degrading by 2 leaves "
            f"{MIN_DEGRADED_CELLS} x {MIN_DEGRADED_CELLS} cells. Use a larger area."
        )
    wanted = largest if fine_factor is None else int(fine_factor)
    return int(max(2, min(wanted, largest)))


def wald_score(model, coarse, X, factor=None, min_valid: float = 0.5) -> WaldResult:
    """Degrade ``coarse`` by ``factor``, downscale it back with a clone of ``model``, score against ``coarse``.

    Parameters
    ----------
    model : estimator
        Anything with ``fit(coarse, X)`` / ``predict(X)``, e.g. a :class:`downscale.Downscaler`;
        it is cloned, never fitted in place.
    coarse : xarray.DataArray
        The coarse field ``(y, x)`` or ``(time, y, x)``: the truth of the protocol.
    X : xarray.Dataset
        Fine covariates nested in ``coarse``; they are aggregated onto the coarse grid.
    factor : int, optional
        Degradation factor. Default: the nesting factor of ``X`` in ``coarse``, reduced so that at
        least 4 x 4 degraded cells remain (see :func:`default_factor`). A grid that is not a
        multiple of ``factor`` is cropped (last rows / columns), with a warning.
    min_valid : float
        Valid fraction of a block needed for a degraded cell (see :func:`downscale.grid.block_mean`).

    Returns
    -------
    WaldResult
        ``scores`` (rows ``downscaled``, ``bilinear``), ``prediction``, ``baseline``, ``degraded``,
        ``factor`` and the ``gain`` over bilinear interpolation.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=5)
    >>> X = ds.covariates.build(dem=scene.dem, features=["elevation"], location=False)
    >>> result = wald_score(ds.Downscaler(trend="linear", calibrate_std=False), scene.coarse, X, factor=4)
    >>> result.prediction.shape, result.degraded.shape
    ((40, 40), (10, 10))
    >>> bool(result.gain > 0)          # elevation explains sub-cell LST: better than bilinear
    True
    """
    from sklearn.base import clone

    from ..covariates import aggregate

    if not isinstance(coarse, xr.DataArray):
        raise TypeError(
            f"coarse must be an xarray DataArray on the coarse grid, got {type(coarse).__name__}."
        )
    grid_module.check_grid(coarse, name="coarse")
    fine_factor = grid_module.nesting_factor(coarse, X)
    ny, nx = coarse.sizes["y"], coarse.sizes["x"]
    if factor is None:
        factor = default_factor(coarse, fine_factor)
    else:
        factor = int(factor)
        if factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor}.")
        if min(ny, nx) // factor < MIN_DEGRADED_CELLS:
            largest = min(ny, nx) // MIN_DEGRADED_CELLS
            hint = f"Use factor <= {largest}." if largest >= 2 else "Use a larger area."
            raise ValueError(
                f"Degrading the {ny} x {nx} coarse grid by factor {factor} leaves "
                f"{ny // factor} x {nx // factor} cells; the Wald protocol needs at least "
                f"{MIN_DEGRADED_CELLS} x {MIN_DEGRADED_CELLS}. {hint}"
            )
    keep_y, keep_x = ny // factor * factor, nx // factor * factor
    if (keep_y, keep_x) != (ny, nx):
        warnings.warn(
            f"The coarse grid ({ny} x {nx}) is not a multiple of factor {factor}; the Wald protocol uses "
            f"its first {keep_y} x {keep_x} cells.",
            stacklevel=2,
        )
        coarse = coarse.isel(y=slice(0, keep_y), x=slice(0, keep_x))
        X = X.isel(y=slice(0, keep_y * fine_factor), x=slice(0, keep_x * fine_factor))

    covariates_coarse = aggregate(X, coarse)
    degraded = grid_module.block_mean(coarse, factor, min_valid=min_valid)
    degraded.attrs = dict(coarse.attrs)
    fitted = clone(model).fit(degraded, covariates_coarse)
    prediction = fitted.predict(covariates_coarse)
    if isinstance(prediction, tuple):
        prediction = prediction[0]
    prediction = prediction.assign_coords(y=coarse["y"], x=coarse["x"]).transpose(*coarse.dims)
    baseline = grid_module.upsample(degraded, factor, "bilinear").assign_coords(y=coarse["y"], x=coarse["x"])
    baseline = baseline.transpose(*coarse.dims).where(coarse.notnull())
    baseline.name = f"{coarse.name or 'value'}_bilinear"

    truth = np.asarray(coarse.values, dtype=np.float64)
    rows = {
        "downscaled": score_table(truth, np.asarray(prediction.values, dtype=np.float64)),
        "bilinear": score_table(truth, np.asarray(baseline.values, dtype=np.float64)),
    }
    scores = pd.DataFrame.from_dict(rows, orient="index")
    scores.index.name = "method"
    scores["n"] = scores["n"].astype(int)
    return WaldResult(
        scores=scores, prediction=prediction, baseline=baseline, degraded=degraded, factor=factor
    )
