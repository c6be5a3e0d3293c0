"""Cross-validation of a downscaling model at the coarse scale, where the only truth is the coarse field.

A coherent downscaling (ATPK) reproduces every coarse cell it was fitted on,
so the fitted cells say nothing about skill. :func:`cross_validate` holds out
coarse cells fold by fold: each fold fits a clone of the model on the coarse
field with the held-out cells set to NaN, predicts the fine field, averages it
back onto the coarse grid with :func:`downscale.grid.block_mean` and compares
those block means with the held-out coarse values.

Which cells are held out together matters. With random folds every held-out
cell keeps its neighbours in the training set, and a smooth interpolation of
them scores well; that measures how well a cloud hole of one cell is filled,
not how the model does where it has no data nearby. Spatial folds
(:class:`~downscale.validation.SpatialBlockKFold`, the default) hold out whole
blocks and estimate the error away from the data (Roberts et al. 2017; Ploton
et al. 2020).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .. import grid as grid_module
from .stations import SCORES

__all__ = ["CrossValidationResult", "cross_validate", "coarse_cell_coordinates"]

#: Scores that need a series of at least three pairs.
_SERIES_SCORES = ("r", "kge", "nse")


@dataclass
class CrossValidationResult:
    """What :func:`cross_validate` returns.

    Attributes
    ----------
    fold_scores : pandas.DataFrame
        One row per fold (index ``fold``): ``n`` held-out values and the scores
        (``rmse, mae, bias, r, ubrmse, kge, nse``) of the predicted block means on them.
    scores : pandas.Series
        The same scores over all out-of-fold values pooled.
    out_of_fold : xarray.DataArray
        The out-of-fold prediction on the coarse grid: each cell holds the block mean of the
        fine prediction of the fold in which it was held out (NaN where the coarse field is NaN).
    folds : xarray.DataArray
        Fold index of every coarse cell (``-1`` where the coarse field has no value).
    cv : str
        Description of the splitter.
    """

    fold_scores: pd.DataFrame
    scores: pd.Series
    out_of_fold: xr.DataArray
    folds: xr.DataArray
    cv: str = ""

    def __getitem__(self, key):  # dict-style access, e.g. result["scores"]
        return getattr(self, key)

    def __repr__(self):
        scores = ", ".join(f"{k}={v:.4g}" for k, v in self.scores.items() if k != "n")
        return f"<CrossValidationResult {self.cv}: {len(self.fold_scores)} folds, {scores}>"


def score_table(y_true, y_pred) -> dict:
    """The standard scores of paired values (NaN pairs dropped): ``n`` and rmse, mae, bias, r, ubrmse, kge, nse.

    Examples
    --------
    >>> score_table([1.0, 2.0, 3.0, float("nan")], [1.0, 2.0, 4.0, 0.0])["bias"]
    0.3333333333333333
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    n = int(ok.sum())
    row = {"n": n}
    for name, metric in SCORES.items():
        needs = 3 if name in _SERIES_SCORES else 1
        with np.errstate(invalid="ignore", divide="ignore"):
            row[name] = float(metric(y_true[ok], y_pred[ok])) if n >= needs else np.nan
    return row


def coarse_cell_coordinates(coarse, points=None) -> np.ndarray:
    """``(n_cells, 2)`` array of the ``(x, y)`` centres of every coarse cell, row-major, in metres.

    On a geographic grid the centres are projected to an azimuthal equidistant
    projection centred on the grid, so that block sizes and buffers stay in metres.
    With ``points`` (a pair of arrays ``(x, y)`` in the grid's CRS), those points are placed
    in the same metric frame instead of the cell centres.

    Examples
    --------
    >>> import downscale as ds
    >>> grid = ds.grid.make_grid((2, 3), 1000.0)
    >>> coarse_cell_coordinates(grid).shape
    (6, 2)
    """
    grid_module.check_grid(coarse, name="coarse")
    yy, xx = np.meshgrid(coarse["y"].values, coarse["x"].values, indexing="ij")
    x, y = xx.ravel().astype(np.float64), yy.ravel().astype(np.float64)
    if grid_module.is_geographic(coarse):
        from pyproj import CRS, Transformer

        lon0, lat0 = float(np.mean(x)), float(np.mean(y))
        if points is not None:
            x, y = (np.asarray(v, dtype=np.float64) for v in points)
        local = CRS.from_proj4(f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +datum=WGS84 +units=m")
        x, y = Transformer.from_crs(grid_module.get_crs(coarse), local, always_xy=True).transform(x, y)
    elif points is not None:
        x, y = (np.asarray(v, dtype=np.float64) for v in points)
    return np.column_stack([x, y])


def _splitter(cv, random_state):
    """The splitter object and a description of it."""
    from sklearn.model_selection import KFold

    from .splitters import SpatialBlockKFold

    if cv is None:
        cv = SpatialBlockKFold(n_splits=5, random_state=random_state)
    if isinstance(cv, str):
        if cv != "random":
            raise ValueError(
                f"cv must be a splitter (e.g. SpatialBlockKFold(n_splits=5)), 'random' or a number of random "
                f"folds, got {cv!r}."
            )
        cv = 5
    if isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
        if cv < 2:
            raise ValueError(f"cv as a number of random folds must be at least 2, got {cv}.")
        return KFold(n_splits=int(cv), shuffle=True, random_state=random_state), f"random {int(cv)}-fold"
    if not hasattr(cv, "split"):
        raise TypeError(
            f"cv must be a splitter with a split() method, 'random' or an int, got {type(cv).__name__}."
        )
    return cv, repr(cv)


def cross_validate(
    model,
    coarse,
    X,
    cv=None,
    mask=None,
    random_state=0,
    min_valid: float = 1e-9,
) -> CrossValidationResult:
    """Cross-validate a downscaling model on the coarse cells: hold out folds, predict them, score block means.

    For each fold, a clone of ``model`` (:func:`sklearn.base.clone`) is fitted on ``coarse``
    with the fold's cells set to NaN (at every time step), the fine field is predicted from
    ``X``, averaged back onto the coarse grid and compared with ``coarse`` on the held-out cells.

    Parameters
    ----------
    model : estimator
        Anything with ``fit(coarse, X)`` and ``predict(X)`` returning the fine field, e.g. a
        :class:`downscale.Downscaler`. It is cloned, never fitted in place.
    coarse : xarray.DataArray
        The coarse field ``(y, x)`` or ``(time, y, x)``.
    X : xarray.Dataset
        Fine covariates on a grid nested in ``coarse``.
    cv : splitter, "random" or int, optional
        A spatial splitter (default ``SpatialBlockKFold(n_splits=5)``) applied to the centres of the
        valid coarse cells (any object whose ``split`` takes an ``(n, 2)`` coordinate array), or
        ``"random"`` / an int for a shuffled random K-fold (5 folds for ``"random"``), for comparison.
    mask : optional
        Passed to ``model.fit(..., mask=mask)`` when given.
    random_state : int
        Seed of the default and random splitters.
    min_valid : float
        Valid fraction of a coarse cell's fine pixels needed for its block mean.

    Returns
    -------
    CrossValidationResult
        ``fold_scores`` (DataFrame), ``scores`` (Series, pooled), ``out_of_fold`` (coarse DataArray)
        and ``folds`` (coarse DataArray of fold indices).

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(120, 120), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, features=["elevation"], location=False)
    >>> model = ds.Downscaler(trend="linear", calibrate_std=False)
    >>> result = cross_validate(model, scene.coarse, X, cv=ds.validation.SpatialBlockKFold(n_splits=3))
    >>> result.fold_scores.index.tolist(), bool(result.scores["rmse"] > 0)
    ([0, 1, 2], True)
    >>> result.out_of_fold.shape == scene.coarse.shape
    True
    """
    from sklearn.base import clone

    if not isinstance(coarse, xr.DataArray):
        raise TypeError(
            f"coarse must be an xarray DataArray on the coarse grid, got {type(coarse).__name__}."
        )
    grid_module.check_grid(coarse, name="coarse")
    factor = grid_module.nesting_factor(coarse, X)
    splitter, description = _splitter(cv, random_state)

    spatial_shape = (coarse.sizes["y"], coarse.sizes["x"])
    values = np.asarray(coarse.transpose(..., "y", "x").values, dtype=np.float64)
    stacked = values.reshape(-1, *spatial_shape)
    valid_cells = np.isfinite(stacked).any(axis=0).ravel()
    cell_index = np.flatnonzero(valid_cells)
    if cell_index.size < 2:
        raise ValueError(f"coarse has {cell_index.size} valid cell(s); cross-validation needs at least 2.")
    coords = coarse_cell_coordinates(coarse)[cell_index]

    fold_of_cell = np.full(valid_cells.size, -1, dtype=np.int64)
    out_of_fold = np.full(stacked.shape, np.nan)
    rows, fold_ids = [], []
    for fold, (_, test) in enumerate(splitter.split(coords)):
        held = cell_index[np.asarray(test)]
        fold_of_cell[held] = fold
        held_mask = np.zeros(valid_cells.size, dtype=bool)
        held_mask[held] = True
        held_mask = held_mask.reshape(spatial_shape)
        training = coarse.where(~xr.DataArray(held_mask, dims=("y", "x")))
        training.attrs = dict(coarse.attrs)
        fitted = clone(model)
        if mask is not None:
            fitted.fit(training, X, mask=mask)
        else:
            fitted.fit(training, X)
        fine = fitted.predict(X)
        if isinstance(fine, tuple):
            fine = fine[0]
        back = grid_module.block_mean(fine, factor, min_valid=min_valid)
        back = np.asarray(back.transpose(..., "y", "x").values, dtype=np.float64).reshape(stacked.shape)
        out_of_fold[:, held_mask] = back[:, held_mask]
        rows.append(score_table(stacked[:, held_mask], back[:, held_mask]))
        fold_ids.append(fold)
    if not rows:
        raise ValueError(f"The splitter {description} produced no folds for {cell_index.size} coarse cells.")

    fold_scores = pd.DataFrame(rows, index=pd.Index(fold_ids, name="fold"))
    fold_scores["n"] = fold_scores["n"].astype(int)
    overall = pd.Series(score_table(stacked, out_of_fold), name="overall")
    out_of_fold = np.where(np.isfinite(stacked), out_of_fold, np.nan)
    oof = coarse.copy(data=out_of_fold.reshape(values.shape)).transpose(*coarse.dims)
    oof.name = f"{coarse.name or 'value'}_cv"
    oof.attrs = {
        **{k: v for k, v in coarse.attrs.items() if k in ("units", "standard_name")},
        "long_name": f"out-of-fold prediction of {coarse.attrs.get('long_name', coarse.name or 'the field')}",
        "comment": f"block mean of the fine prediction with the cell held out ({description})",
    }
    folds = xr.DataArray(
        fold_of_cell.reshape(spatial_shape),
        dims=("y", "x"),
        coords={"y": coarse["y"], "x": coarse["x"]},
        name="fold",
        attrs={"long_name": "cross-validation fold", "comment": "-1: no value, not used"},
    )
    crs = grid_module.get_crs(coarse)
    if crs is not None:
        folds = grid_module.set_crs(folds, crs)
    return CrossValidationResult(
        fold_scores=fold_scores, scores=overall, out_of_fold=oof, folds=folds, cv=description
    )
