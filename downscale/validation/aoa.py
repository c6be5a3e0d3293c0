"""Area of applicability (AOA): where the trend model's covariates resemble what it was trained on.

Meyer and Pebesma (2021): a model is only as good as its cross-validation
says where the predictors look like the training data. The *dissimilarity
index* (DI) of a location is its distance, in the standardised and
importance-weighted predictor space, to the nearest training sample, divided
by the mean distance between training samples. The AOA is where DI does not
exceed a threshold learned from the training data themselves: the upper
whisker of a box plot of the training samples' DI, each computed to the
nearest training sample *outside its own cross-validation fold*.

Reference: Meyer, H. and Pebesma, E. (2021). Predicting into unknown space? Estimating the area of
applicability of spatial prediction models. Methods Ecol. Evol. 12, 1620-1633, doi:10.1111/2041-210X.13650.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

__all__ = ["area_of_applicability", "dissimilarity_index", "upper_whisker"]

#: Above this many training rows the mean pairwise distance is estimated on a random subset.
_MAX_PAIRWISE = 4000


def _as_matrix(X, name, features=None):
    """``X`` as a float matrix (rows = samples), its feature names, and how to put results back."""
    import xarray as xr

    if isinstance(X, xr.Dataset):
        names = [n for n, da in X.data_vars.items() if {"y", "x"} <= set(da.dims)]
        if not names:
            raise ValueError(f"{name} has no variables with dims ('y', 'x').")
        order = features if features is not None else names
        missing = [f for f in order if f not in X.data_vars]
        if missing:
            raise ValueError(f"{name} lacks the feature(s) {missing} the training table has; it has {names}.")
        arrays = xr.broadcast(*[X[f].transpose(..., "y", "x") for f in order])
        template = arrays[0]
        matrix = np.column_stack([np.asarray(a.values, dtype=np.float64).ravel() for a in arrays])
        return matrix, list(order), ("grid", template)
    if isinstance(X, pd.DataFrame):
        if features is not None:
            missing = [f for f in features if f not in X.columns]
            if missing:
                raise ValueError(
                    f"{name} lacks the feature(s) {missing} the training table has; its columns are "
                    f"{list(X.columns)}."
                )
            X = X[features]
        else:
            X = X.select_dtypes("number")
        return X.to_numpy(dtype=np.float64), [str(c) for c in X.columns], ("frame", X.index)
    matrix = np.asarray(X, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(
            f"{name} must be a table (rows = samples, columns = features); got shape {matrix.shape}."
        )
    if features is not None and matrix.shape[1] != len(features):
        raise ValueError(f"{name} has {matrix.shape[1]} columns but the training data have {len(features)}.")
    return matrix, features, ("array", None)


def _weights_vector(weights, features, n_features):
    if weights is None:
        return np.ones(n_features)
    if isinstance(weights, (dict, pd.Series)):
        weights = dict(weights)
        if features is None:
            raise ValueError(
                "Named weights need named features: pass the training data as a DataFrame or Dataset."
            )
        unknown = [k for k in weights if k not in features]
        if unknown:
            raise ValueError(
                f"weights name feature(s) {unknown} that are not in the training data {features}."
            )
        vector = np.array([float(weights.get(f, 0.0)) for f in features])
    else:
        vector = np.asarray(weights, dtype=np.float64).ravel()
        if vector.size != n_features:
            raise ValueError(f"weights has {vector.size} values but there are {n_features} features.")
    vector = np.where(np.isfinite(vector) & (vector > 0), vector, 0.0)
    if not vector.any():
        raise ValueError(
            "All feature weights are zero or negative; the dissimilarity index would be undefined."
        )
    return vector


class _Space:
    """Standardised, weighted predictor space of the training data."""

    def __init__(self, train_X, weights):
        matrix, self.features, self.layout = _as_matrix(train_X, "train_X")
        self.n_total = len(matrix)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            warnings.warn(
                f"{int((~finite).sum())} training row(s) with missing values are left out of the AOA.",
                stacklevel=3,
            )
        self.rows = np.flatnonzero(finite)
        matrix = matrix[finite]
        if len(matrix) < 2:
            raise ValueError(f"The AOA needs at least 2 complete training rows; there are {len(matrix)}.")
        self.mean = matrix.mean(axis=0)
        scale = matrix.std(axis=0, ddof=1)
        # A feature constant in training keeps raw units: any departure from it still counts as distance.
        self.scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        self.weights = _weights_vector(weights, self.features, matrix.shape[1])
        self.train = self.transform(matrix)
        self.mean_distance = _mean_pairwise_distance(self.train)
        if not self.mean_distance > 0:
            raise ValueError(
                "All training rows are identical in the weighted predictor space; DI is undefined."
            )

    def transform(self, matrix):
        return (matrix - self.mean) / self.scale * self.weights

    def dissimilarity(self, matrix):
        from scipy.spatial import cKDTree

        di = np.full(len(matrix), np.nan)
        finite = np.isfinite(matrix).all(axis=1)
        if finite.any():
            distance = cKDTree(self.train).query(self.transform(matrix[finite]), k=1, workers=-1)[0]
            di[finite] = distance / self.mean_distance
        return di

    def training_dissimilarity(self, cv_folds):
        """DI of each training row to the nearest training row outside its CV fold (leave-one-out without folds)."""
        from scipy.spatial import cKDTree

        tree = cKDTree(self.train)
        distance = tree.query(self.train, k=2)[0][:, 1]
        if cv_folds is not None:
            for train_rows, test_rows in _fold_pairs(cv_folds, self.n_total, self.rows):
                if len(train_rows) == 0 or len(test_rows) == 0:
                    continue
                distance[test_rows] = cKDTree(self.train[train_rows]).query(self.train[test_rows], k=1)[0]
        return distance / self.mean_distance


def _fold_pairs(cv_folds, n_total, kept_rows):
    """Normalise fold labels or (train, test) index pairs to pairs over the kept training rows."""
    position = np.full(n_total, -1)
    position[kept_rows] = np.arange(kept_rows.size)

    def remap(index):
        index = np.asarray(index, dtype=np.int64)
        mapped = position[index]
        return mapped[mapped >= 0]

    if hasattr(cv_folds, "split") and hasattr(cv_folds, "get_n_splits"):
        raise TypeError(
            "cv_folds must be fold labels (one per training row) or a list of (train, test) index pairs; "
            "got a splitter. Pass `list(cv.split(X))`."
        )
    folds = list(cv_folds) if not isinstance(cv_folds, np.ndarray) else cv_folds
    if (
        len(folds)
        and isinstance(folds[0], (tuple, list))
        and len(folds[0]) == 2
        and np.ndim(folds[0][0]) == 1
    ):
        return [(remap(train), remap(test)) for train, test in folds]
    labels = np.asarray(folds).ravel()
    if labels.size != n_total:
        raise ValueError(
            f"cv_folds has {labels.size} fold labels but the training data have {n_total} rows; "
            f"pass one label per training row, or a list of (train, test) index pairs."
        )
    labels = labels[kept_rows]
    return [(np.flatnonzero(labels != f), np.flatnonzero(labels == f)) for f in pd.unique(labels)]


def _mean_pairwise_distance(points):
    from scipy.spatial.distance import pdist

    if len(points) > _MAX_PAIRWISE:
        rng = np.random.default_rng(0)
        points = points[rng.choice(len(points), size=_MAX_PAIRWISE, replace=False)]
    return float(pdist(points).mean())


def upper_whisker(values, coef: float = 1.5) -> float:
    """Upper whisker of a box plot as R's ``boxplot.stats`` draws it.

    The largest value not above ``Q3 + coef * (Q3 - Q1)``, with Tukey's hinges
    (``fivenum``) as quartiles.

    Examples
    --------
    >>> upper_whisker([1.0, 2.0, 3.0, 4.0, 100.0])
    4.0
    """
    x = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    n = x.size
    if n == 0:
        return float("nan")
    n4 = np.floor((n + 3) / 2) / 2
    depths = np.array([n4, n + 1 - n4]) - 1  # zero-based
    lower, upper = 0.5 * (x[np.floor(depths).astype(int)] + x[np.ceil(depths).astype(int)])
    limit = upper + coef * (upper - lower)
    return float(x[x <= limit].max())


def _wrap(values, layout, name, attrs):
    kind, info = layout
    if kind == "grid":
        from ..grid import get_crs, set_crs

        out = info.copy(data=values.reshape(info.shape))
        out.name = name
        out.attrs = dict(attrs)
        crs = get_crs(info)
        return set_crs(out, crs) if crs is not None else out
    if kind == "frame":
        return pd.Series(values, index=info, name=name)
    return values


_DI_ATTRS = {
    "long_name": "dissimilarity index of the covariates to the training data (Meyer and Pebesma 2021)",
    "units": "1",
}


def dissimilarity_index(train_X, new_X=None, weights=None, cv_folds=None):
    """Dissimilarity index (DI) of ``new_X`` to the training data ``train_X``.

    Features are standardised with the training mean and standard deviation,
    multiplied by ``weights`` (feature importance; negative ones count as 0),
    and DI is the distance to the nearest training row divided by the mean
    distance between training rows. Rows with a missing feature get NaN.

    Parameters
    ----------
    train_X : pandas.DataFrame, xarray.Dataset or 2-D array
        The predictors of the training samples (e.g. the coarse pixels the trend model was fitted on).
    new_X : pandas.DataFrame, xarray.Dataset or 2-D array, optional
        Where to evaluate DI (e.g. the fine covariates). Features are matched by name.
        When omitted, the DI of the training rows themselves is returned, each to the nearest
        training row outside its ``cv_folds`` fold (leave-one-out without folds).
    weights : dict, pandas.Series or array, optional
        Feature importances (e.g. permutation importance of the trend model).
    cv_folds : array of fold labels or list of (train, test) index pairs, optional
        The cross-validation folds of the training data (only used for the training DI).

    Returns
    -------
    numpy.ndarray, pandas.Series (DataFrame input) or xarray.DataArray (Dataset input, on its grid)

    Examples
    --------
    >>> import numpy as np
    >>> train = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> # scaled by sd = 0.577: sides 1.732, diagonals 2.449, mean distance 1.971; 0.866 / 1.971 = 0.439
    >>> dissimilarity_index(train, np.array([[0.0, 0.0], [0.5, 0.0]])).round(3).tolist()
    [0.0, 0.439]
    """
    space = _Space(train_X, weights)
    if new_X is None:
        values = np.full(len(_as_matrix(train_X, "train_X")[0]), np.nan)
        values[space.rows] = space.training_dissimilarity(cv_folds)
        return _wrap(values, space.layout, "dissimilarity_index", _DI_ATTRS)
    matrix, _, layout = _as_matrix(new_X, "new_X", features=space.features)
    if matrix.shape[1] != space.train.shape[1]:
        raise ValueError(
            f"new_X has {matrix.shape[1]} features but the training data have {space.train.shape[1]}."
        )
    return _wrap(space.dissimilarity(matrix), layout, "dissimilarity_index", _DI_ATTRS)


def area_of_applicability(train_X, new_X, weights=None, cv_folds=None):
    """Dissimilarity index, AOA mask and threshold of Meyer and Pebesma (2021).

    Parameters
    ----------
    train_X, new_X, weights, cv_folds
        As in :func:`dissimilarity_index`. Pass the folds the model was cross-validated with:
        the threshold then reflects the extrapolation the CV error estimate covers.

    Returns
    -------
    di : like ``new_X`` (DataArray on the grid for a Dataset)
        Dissimilarity index, NaN where a covariate is missing.
    mask : like ``di``, bool
        True inside the area of applicability (``di <= threshold``); False outside and where DI is NaN.
    threshold : float
        Upper whisker (Tukey hinges, 1.5 IQR; see :func:`upper_whisker`) of the training DI computed with the
        CV folds held out.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> train = rng.uniform(0, 1, size=(100, 2))
    >>> di, inside, threshold = area_of_applicability(train, np.array([[0.5, 0.5], [3.0, 3.0]]))
    >>> inside.tolist()
    [True, False]
    """
    space = _Space(train_X, weights)
    threshold = upper_whisker(space.training_dissimilarity(cv_folds))
    matrix, _, layout = _as_matrix(new_X, "new_X", features=space.features)
    if matrix.shape[1] != space.train.shape[1]:
        raise ValueError(
            f"new_X has {matrix.shape[1]} features but the training data have {space.train.shape[1]}."
        )
    di = space.dissimilarity(matrix)
    with np.errstate(invalid="ignore"):
        inside = di <= threshold
    di_out = _wrap(di, layout, "dissimilarity_index", {**_DI_ATTRS, "aoa_threshold": threshold})
    mask_attrs = {
        "long_name": "inside the area of applicability of the trend model",
        "comment": "true (1) inside, false (0) outside the training space or where a covariate is missing",
        "aoa_threshold": threshold,
    }
    mask = _wrap(inside, layout, "aoa", mask_attrs)
    return di_out, mask, threshold
