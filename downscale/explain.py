"""SHAP explanations of the trend model of a Downscaler: global importance, dependence and per-pixel maps.

The trend of a :class:`~downscale.Downscaler` is a regressor fitted on the
block means of the covariates over the valid coarse cells and applied to the
fine pixels. Its SHAP values (Lundberg and Lee 2017) split each fine pixel's
trend into a base value (the mean trend over the training cells) plus one
contribution per covariate; they add up exactly to the trend. Tree models
(random forest, LightGBM) use the exact TreeSHAP algorithm; the linear trend
(clipping, standardising and ridge regression, all feature by feature) has the
closed form ``coef_j * (x_j - mean_j)`` in its standardised space. Other
regressors get a clear error.

SHAP values explain the *trend* in the model's working space: for a variable
with a transform (``log1p`` for precipitation and NO2, a logit for soil
moisture) they are in that space, not in the variable's units. The residual
kriging adds what the covariates do not explain and is not part of them.

Fine pixels are many; explanations are computed on a random sample
(:func:`shap_values`) or on a strided sub-grid (:func:`shap_maps`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from . import grid as grid_module

__all__ = ["ShapValues", "applicability", "global_importance", "shap_maps", "shap_values", "trend_table"]


@dataclass
class ShapValues:
    """SHAP values of the trend over a set of fine pixels.

    Attributes
    ----------
    values : pandas.DataFrame
        One row per pixel (index ``y``, ``x``), one column per covariate: the contributions.
    data : pandas.DataFrame
        The covariate values of the same pixels.
    base_value : float
        Expected trend (the SHAP base value); ``base_value + values.sum(axis=1)`` is the trend.
    space : str
        The space the trend works in (the Downscaler's transform, e.g. ``"none"`` or ``"log1p"``).
    """

    values: pd.DataFrame
    data: pd.DataFrame
    base_value: float
    space: str = "none"

    @property
    def prediction(self) -> pd.Series:
        """The trend at the pixels, as rebuilt from the SHAP values."""
        return self.base_value + self.values.sum(axis=1)

    def __repr__(self):
        return f"<ShapValues: {len(self.values)} pixels x {self.values.shape[1]} covariates, space {self.space!r}>"


def _trend_model(model, time):
    """The fitted trend regressor, its feature names and working space."""
    if hasattr(model, "trend_models_"):
        models = model.trend_models_
        index = 0 if len(models) == 1 else int(time)
        if not 0 <= index < len(models):
            raise ValueError(f"time={time} is out of range: the model has {len(models)} trend model(s).")
        # Only the covariates the trend uses (trend="auto" leaves out those the coarse cells cannot inform).
        names = list(getattr(model, "features_used_", None) or model.feature_names_)
        space = getattr(getattr(model, "transform_", None), "name", "none")
        if getattr(model, "n_rounds_", None) == 0:
            raise ValueError(
                "The trend='lightgbm' of this Downscaler kept 0 boosting rounds: on held-out coarse cells "
                "no round predicted better than the mean (early stopping; see rounds_cv_), so the trend is "
                "a constant and there is nothing to explain. Fit with early_stopping=False to explain the "
                "trees anyway."
            )
        return models[index], names, space
    if hasattr(model, "trend") and hasattr(model, "residual"):
        raise ValueError(f"{type(model).__name__} is not fitted; call fit(coarse, X) before explaining it.")
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        raise ValueError(
            f"Cannot tell which covariates {type(model).__name__} uses: pass a fitted downscale.Downscaler, "
            f"or a regressor fitted on a DataFrame (it then has feature_names_in_)."
        )
    return model, [str(n) for n in names], "none"


def trend_table(model, X, sample=None, seed: int = 0, stride=None, time: int = 0) -> pd.DataFrame:
    """The covariates of the fine pixels as the trend sees them: a table indexed by ``(y, x)``.

    Pixels with a missing covariate, or outside the model's ``mask_``, are dropped. ``stride``
    keeps every ``stride``-th row and column; ``sample`` then draws that many pixels at random.
    """
    _, names, _ = _trend_model(model, time)
    missing = [n for n in names if n not in X.data_vars]
    if missing:
        raise ValueError(
            f"X is missing covariate(s) {missing} the model was fitted with; it has {sorted(X.data_vars)}. "
            f"Build X with the same options as for fit."
        )
    columns = {}
    for name in names:
        da = X[name]
        if "time" in da.dims:
            da = da.isel(time=min(int(time), da.sizes["time"] - 1))
        columns[name] = np.asarray(da.transpose("y", "x").values, dtype=np.float64)
    shape = next(iter(columns.values())).shape
    keep = np.ones(shape, dtype=bool)
    mask = getattr(model, "mask_", None)
    if mask is not None and np.shape(mask) == shape:
        keep &= np.asarray(mask, dtype=bool)
    for values in columns.values():
        keep &= np.isfinite(values)
    if stride is not None:
        stride = int(stride)
        if stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}.")
        thin = np.zeros(shape, dtype=bool)
        thin[::stride, ::stride] = True
        keep &= thin
    rows, cols = np.nonzero(keep)
    if sample is not None and rows.size > int(sample):
        pick = np.sort(np.random.default_rng(seed).choice(rows.size, size=int(sample), replace=False))
        rows, cols = rows[pick], cols[pick]
    if rows.size == 0:
        raise ValueError(
            "No fine pixel has all the covariates (and lies inside the mask); nothing to explain."
        )
    index = pd.MultiIndex.from_arrays([X["y"].values[rows], X["x"].values[cols]], names=["y", "x"])
    table = pd.DataFrame({name: columns[name][rows, cols] for name in names}, index=index)
    table.attrs["rows"], table.attrs["cols"] = rows, cols
    return table


def _linear_shap(pipeline, table):
    """Exact SHAP values of a feature-wise transform chain ending in a linear model (independent features)."""
    steps = [step for _, step in pipeline.steps]
    head, final = steps[:-1], steps[-1]
    transformed = table.to_numpy()
    columns = np.arange(transformed.shape[1])  # which table column each transformed column is
    # The background is the training data as summarised by the scaler: its mean maps to 0.
    for step in head:
        transformed = step.transform(transformed)
        if hasattr(step, "support_"):  # DropCollinear: the features it left out contribute nothing
            columns = columns[step.support_]
    coef = np.ravel(final.coef_)
    if not any(hasattr(step, "mean_") and hasattr(step, "scale_") for step in head):
        raise ValueError(
            "The linear trend has no StandardScaler step, so its training mean is unknown; "
            "SHAP values need that reference point."
        )
    # Standardised, the training mean is 0: each contribution is coef * standardised value.
    values = np.zeros(table.shape)
    values[:, columns] = coef * transformed
    base = float(np.ravel(final.intercept_)[0]) if np.ndim(final.intercept_) else float(final.intercept_)
    return values, base


def _is_linear_pipeline(model):
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        return False
    final = model.steps[-1][1]
    head = [step for _, step in model.steps[:-1]]
    elementwise = all(
        type(step).__name__ in ("DropCollinear", "ClipToRange", "StandardScaler") for step in head
    )
    return hasattr(final, "coef_") and elementwise


def _explain(regressor, table):
    """SHAP values ``(n, p)`` and the base value of a fitted regressor on a covariate table."""
    from sklearn.dummy import DummyRegressor

    from .models.trend import ShrunkTrend

    if isinstance(regressor, ShrunkTrend):
        # mean + w (f - mean) is linear in f: contributions scale by w, the base value moves toward the mean.
        values, base = _explain(regressor.estimator_, table)
        weight = float(regressor.weight)
        return weight * values, regressor.mean_ + weight * (base - regressor.mean_)
    if isinstance(regressor, DummyRegressor):
        raise ValueError(
            "The trend is a constant (trend='none'): no covariate contributes, there is nothing to explain. "
            "Fit the Downscaler with trend='rf', 'lightgbm' or 'linear'."
        )
    if _is_linear_pipeline(regressor):
        return _linear_shap(regressor, table)
    tree_model = getattr(regressor, "booster_", None) or regressor
    name = type(tree_model).__name__
    tree_like = (
        hasattr(tree_model, "estimators_")
        or name.startswith(("LGBM", "XGB", "CatBoost"))
        or hasattr(tree_model, "tree_")
    )
    if not tree_like:
        raise ValueError(
            f"SHAP explanations are available for tree trends (random forest, LightGBM) and the linear "
            f"trend; got {type(regressor).__name__}. Fit the Downscaler with trend='rf', 'lightgbm' or "
            f"'linear'."
        )
    try:
        with warnings.catch_warnings():
            # shap's colour maps use matplotlib calls that are being deprecated; not our users' concern.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            import shap
    except ImportError as error:  # pragma: no cover - shap is a core dependency
        raise ImportError("Explaining tree models needs the 'shap' package: pip install shap") from error
    explainer = shap.TreeExplainer(tree_model)
    values = np.asarray(explainer.shap_values(table.to_numpy(), check_additivity=False), dtype=np.float64)
    base = float(np.ravel(explainer.expected_value)[0])
    return values, base


def shap_values(model, X, sample: int | None = 2000, seed: int = 0, time: int = 0) -> ShapValues:
    """SHAP values of the trend model over a random sample of fine pixels.

    Parameters
    ----------
    model : downscale.Downscaler or fitted regressor
        A fitted Downscaler (its trend model is explained), or a regressor fitted on a DataFrame
        whose columns are variables of ``X``.
    X : xarray.Dataset
        Fine covariates (the same as for fit).
    sample : int or None
        Number of pixels drawn at random (``None``: all of them; slow for big grids with tree models).
    seed : int
        Seed of the sample.
    time : int
        Time step whose trend model is explained (per-step Downscalers have one per step).

    Returns
    -------
    ShapValues
        ``values`` and ``data`` tables (index ``y``, ``x``), ``base_value`` and ``space``.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(120, 120), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, features=["elevation", "slope"])
    >>> model = ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    >>> explained = shap_values(model, X, sample=500)
    >>> explained.values.shape                     # the covariates the trend uses (model.features_used_)
    (500, 4)
    >>> global_importance(explained).index[0]        # the lapse rate dominates LST
    'elevation'
    """
    regressor, names, space = _trend_model(model, time)
    table = trend_table(model, X, sample=sample, seed=seed, time=time)
    values, base = _explain(regressor, table)
    return ShapValues(
        values=pd.DataFrame(values, index=table.index, columns=names),
        data=table,
        base_value=base,
        space=space,
    )


def global_importance(explained, X=None, **kwargs) -> pd.DataFrame:
    """Global importance of each covariate: mean absolute SHAP value, sorted from the largest.

    Parameters
    ----------
    explained : ShapValues or fitted model
        SHAP values from :func:`shap_values`, or a model (then ``X`` and any :func:`shap_values`
        keyword are passed on).

    Returns
    -------
    pandas.DataFrame
        Index ``covariate``; columns ``mean_abs_shap``, ``share`` (fraction of the total) and
        ``mean_shap`` (signed mean).
    """
    if not isinstance(explained, ShapValues):
        if X is None:
            raise ValueError("Pass SHAP values from shap_values(), or a fitted model and its covariates X.")
        explained = shap_values(explained, X, **kwargs)
    magnitude = explained.values.abs().mean()
    total = float(magnitude.sum())
    table = pd.DataFrame(
        {
            "mean_abs_shap": magnitude,
            "share": magnitude / total if total > 0 else np.nan,
            "mean_shap": explained.values.mean(),
        }
    )
    table.index.name = "covariate"
    return table.sort_values("mean_abs_shap", ascending=False)


def shap_maps(model, X, stride=None, max_pixels: int = 2500, time: int = 0) -> xr.Dataset:
    """Per-pixel SHAP maps of the trend on a strided sub-grid of the fine grid.

    Parameters
    ----------
    model : downscale.Downscaler or fitted regressor
    X : xarray.Dataset
        Fine covariates.
    stride : int, optional
        Keep every ``stride``-th row and column. Default: the smallest stride giving at most
        ``max_pixels`` pixels.
    max_pixels : int
    time : int

    Returns
    -------
    xarray.Dataset
        One map per covariate (its SHAP value, NaN where a covariate is missing), plus ``trend``
        (base value + contributions); the sub-grid keeps the CRS, ``stride`` and ``base_value``
        are attributes.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(120, 120), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, features=["elevation"])
    >>> model = ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    >>> maps = shap_maps(model, X, stride=4)
    >>> maps["elevation"].shape, maps.attrs["stride"]
    ((30, 30), 4)
    """
    regressor, names, space = _trend_model(model, time)
    ny, nx = X.sizes["y"], X.sizes["x"]
    if stride is None:
        stride = max(1, int(np.ceil(np.sqrt(ny * nx / max(int(max_pixels), 1)))))
    stride = int(stride)
    table = trend_table(model, X, stride=stride, time=time)
    values, base = _explain(regressor, table)
    rows, cols = table.attrs["rows"] // stride, table.attrs["cols"] // stride
    sub = X.isel(y=slice(None, None, stride), x=slice(None, None, stride))
    shape = (sub.sizes["y"], sub.sizes["x"])
    coords = {"y": sub["y"], "x": sub["x"]}
    variables = {}
    for j, name in enumerate(names):
        grid = np.full(shape, np.nan)
        grid[rows, cols] = values[:, j]
        variables[name] = xr.DataArray(
            grid, dims=("y", "x"), coords=coords, attrs={"long_name": f"SHAP value of {name}", "space": space}
        )
    trend = np.full(shape, np.nan)
    trend[rows, cols] = base + values.sum(axis=1)
    variables["trend"] = xr.DataArray(
        trend,
        dims=("y", "x"),
        coords=coords,
        attrs={"long_name": "trend (base value + SHAP values)", "space": space},
    )
    maps = xr.Dataset(variables, attrs={"stride": stride, "base_value": base, "space": space})
    crs = grid_module.get_crs(X)
    return grid_module.set_crs(maps, crs) if crs is not None else maps


def applicability(model, X, weights="shap", cv=None, sample: int = 2000, seed: int = 0, time: int = 0):
    """Area of applicability of a fitted Downscaler's trend over the fine grid (Meyer and Pebesma 2021).

    The training rows are the block means of the covariates over the coarse cells the trend was
    fitted on (and the station values, when they joined the trend); the new rows are the fine
    pixels. Features are weighted by their SHAP importance (mean absolute SHAP value,
    :func:`global_importance`), so that covariates the trend ignores do not count, and the
    threshold comes from the training dissimilarity with spatial folds held out.

    Parameters
    ----------
    model : downscale.Downscaler
        Fitted.
    X : xarray.Dataset
        The fine covariates used in fit.
    weights : "shap", None, dict or pandas.Series
        Feature weights: SHAP importance (default), none (all equal), or given.
    cv : splitter, optional
        Splitter over the coarse cell centres for the threshold (default
        ``SpatialBlockKFold(n_splits=5)``).
    sample, seed
        Pixels used for the SHAP weights.

    Returns
    -------
    dissimilarity : xarray.DataArray
        Dissimilarity index on the fine grid.
    inside : xarray.DataArray of bool
        True inside the area of applicability, named ``aoa``.
    threshold : float

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(120, 120), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, features=["elevation", "slope"])
    >>> model = ds.Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    >>> di, inside, threshold = applicability(model, X)
    >>> di.dims, inside.name, bool(0 < float(inside.mean()) <= 1)
    (('y', 'x'), 'aoa', True)
    """
    from .covariates import aggregate
    from .validation.aoa import area_of_applicability
    from .validation.crossval import coarse_cell_coordinates
    from .validation.splitters import SpatialBlockKFold

    if not hasattr(model, "trend_models_"):
        raise ValueError(
            f"applicability needs a fitted downscale.Downscaler (its training cells are the coarse cells); "
            f"got {type(model).__name__}" + (" that is not fitted" if hasattr(model, "trend") else "") + "."
        )
    names = list(getattr(model, "features_used_", None) or model.feature_names_)
    coarse = model.coarse_
    if "time" in coarse.dims:
        coarse = coarse.isel(time=min(int(time), coarse.sizes["time"] - 1))
    fine = X[names]
    if "time" in fine.dims:
        fine = fine.isel(time=min(int(time), fine.sizes["time"] - 1))
    training = aggregate(fine, coarse, min_valid=1e-9)
    table = pd.DataFrame({n: np.asarray(training[n].values, dtype=np.float64).ravel() for n in names})
    valid = np.isfinite(np.asarray(coarse.values, dtype=np.float64)).ravel() & np.isfinite(
        table.to_numpy()
    ).all(1)
    coords = coarse_cell_coordinates(coarse)[valid]
    table = table[valid].reset_index(drop=True)
    if getattr(model, "station_trend_", False):  # the station values are training rows too
        rows = model.station_rows_
        if "time" in model.coarse_.dims:
            rows = rows[rows["time_index"] == min(int(time), model.coarse_.sizes["time"] - 1)]
        table = pd.concat([table, rows[names]], ignore_index=True)
        points = (rows["x"].to_numpy(), rows["y"].to_numpy())
        coords = np.concatenate([coords, coarse_cell_coordinates(coarse, points=points)])
    if isinstance(weights, str):
        if weights != "shap":
            raise ValueError(f"weights must be 'shap', None, a dict or a Series, got {weights!r}.")
        weights = global_importance(shap_values(model, X, sample=sample, seed=seed, time=time))[
            "mean_abs_shap"
        ]
    splitter = cv if cv is not None else SpatialBlockKFold(n_splits=5)
    folds = list(splitter.split(coords))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*training row.*missing values.*")
        dissimilarity, inside, threshold = area_of_applicability(table, fine, weights=weights, cv_folds=folds)
    inside = inside.astype(bool).rename("aoa")
    crs = grid_module.get_crs(X)
    if crs is not None:
        dissimilarity, inside = grid_module.set_crs(dissimilarity, crs), grid_module.set_crs(inside, crs)
    return dissimilarity, inside, threshold
