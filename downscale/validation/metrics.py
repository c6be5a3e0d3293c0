"""Skill scores of a prediction against observations, and bootstrap confidence intervals.

Every metric takes ``(y_true, y_pred)`` in the scikit-learn order. Inputs are
flattened; pairs where either value is NaN (or infinite) are dropped, so a
field sampled at stations with gaps can be scored directly. A metric of fewer
valid pairs than it needs returns NaN.

Sign convention: ``bias = mean(y_pred - y_true)`` (positive when the prediction
is too high).

References
----------
- Gupta, H. V., Kling, H., Yilmaz, K. K. and Martinez, G. F. (2009). Decomposition of the
  mean squared error and NSE performance criteria. J. Hydrol. 377, 80-91.
- Kling, H., Fuchs, M. and Paulin, M. (2012). Runoff conditions in the upper Danube basin
  under an ensemble of climate change scenarios. J. Hydrol. 424-425, 264-277 (KGE 2012).
- Nash, J. E. and Sutcliffe, J. V. (1970). River flow forecasting through conceptual models
  part I. J. Hydrol. 10, 282-290.
- Entekhabi, D., Reichle, R. H., Koster, R. D. and Crow, W. T. (2010). Performance metrics
  for soil moisture retrievals and application requirements. J. Hydrometeorol. 11, 832-840
  (ubRMSE).
- Merlin, O., Malbéteau, Y., Notfi, Y., Bacon, S., Khabba, S. and Jarlan, L. (2015).
  Performance metrics for soil moisture downscaling methods: application to DISPATCH data
  in central Morocco. Remote Sens. 7, 3783-3807, doi:10.3390/rs70403783 (GDOWN).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bias",
    "bootstrap_ci",
    "gdown",
    "kge",
    "mae",
    "nse",
    "pearson_r",
    "rmse",
    "ubrmse",
]


def _valid_pairs(*arrays, names=("y_true", "y_pred", "y_coarse")):
    """Flatten the arrays, check they match, and keep the positions where all are finite."""
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    sizes = {f.size for f in flat}
    if len(sizes) > 1:
        given = ", ".join(f"{name} has {f.size}" for name, f in zip(names, flat, strict=False))
        raise ValueError(
            f"The inputs must have the same number of values; {given}. "
            f"Pass values paired element by element (e.g. observation and prediction at each station)."
        )
    keep = np.ones(flat[0].size, dtype=bool)
    for f in flat:
        keep &= np.isfinite(f)
    return [f[keep] for f in flat]


# Kernels on clean arrays, vectorised along the last axis (rows = bootstrap replicates).


def _rmse(t, p):
    return np.sqrt(np.mean((p - t) ** 2, axis=-1))


def _mae(t, p):
    return np.mean(np.abs(p - t), axis=-1)


def _bias(t, p):
    return np.mean(p - t, axis=-1)


def _ubrmse(t, p):
    d = p - t
    return np.sqrt(np.mean((d - d.mean(axis=-1, keepdims=True)) ** 2, axis=-1))


def _pearson(t, p):
    ta = t - t.mean(axis=-1, keepdims=True)
    pa = p - p.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(ta * pa, axis=-1) / np.sqrt(np.sum(ta**2, axis=-1) * np.sum(pa**2, axis=-1))
    return np.clip(r, -1.0, 1.0)


def _nse(t, p):
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - np.sum((p - t) ** 2, axis=-1) / np.sum(
            (t - t.mean(axis=-1, keepdims=True)) ** 2, axis=-1
        )


def _kge(t, p):
    r = _pearson(t, p)
    mean_t, mean_p = t.mean(axis=-1), p.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = mean_p / mean_t
        gamma = (p.std(axis=-1) / mean_p) / (t.std(axis=-1) / mean_t)
    return 1.0 - np.sqrt((r - 1.0) ** 2 + (beta - 1.0) ** 2 + (gamma - 1.0) ** 2)


def _slope(t, p):
    """Slope of the least-squares line ``p = a + slope * t`` (prediction against observation)."""
    ta = t - t.mean(axis=-1, keepdims=True)
    pa = p - p.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(ta * pa, axis=-1) / np.sum(ta**2, axis=-1)


def _gain(score_fine, score_coarse):
    """Merlin et al. (2015) gain between two distances to the ideal: (|c| - |f|) / (|c| + |f|), 0 when both are 0."""
    fine, coarse = np.abs(score_fine), np.abs(score_coarse)
    total = fine + coarse
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (coarse - fine) / np.where(total > 0, total, 1.0), 0.0)


def _gdown(t, p, c):
    gain_r = _gain(1.0 - _pearson(t, p), 1.0 - _pearson(t, c))
    gain_b = _gain(_bias(t, p), _bias(t, c))
    gain_s = _gain(1.0 - _slope(t, p), 1.0 - _slope(t, c))
    return (gain_r + gain_b + gain_s) / 3.0


def _scalar(value):
    value = np.asarray(value, dtype=np.float64)
    return float(value) if np.isfinite(value) else float("nan")


def rmse(y_true, y_pred) -> float:
    """Root mean square error, ``sqrt(mean((y_pred - y_true)**2))``.

    Examples
    --------
    >>> rmse([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    1.2909944487358056
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_rmse(t, p)) if t.size else float("nan")


def mae(y_true, y_pred) -> float:
    """Mean absolute error, ``mean(|y_pred - y_true|)``.

    Examples
    --------
    >>> mae([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    1.0
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_mae(t, p)) if t.size else float("nan")


def bias(y_true, y_pred) -> float:
    """Mean error ``mean(y_pred - y_true)``: positive when the prediction is too high.

    Examples
    --------
    >>> bias([1.0, 2.0, float("nan")], [2.0, 4.0, 0.0])   # the NaN pair is dropped
    1.5
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_bias(t, p)) if t.size else float("nan")


def ubrmse(y_true, y_pred) -> float:
    """Unbiased RMSE (Entekhabi et al. 2010): RMSE after removing the mean error, ``sqrt(rmse**2 - bias**2)``.

    Examples
    --------
    >>> ubrmse([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])   # a constant offset has no unbiased error
    0.0
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_ubrmse(t, p)) if t.size else float("nan")


def pearson_r(y_true, y_pred) -> float:
    """Pearson correlation coefficient; NaN with fewer than 2 pairs or a constant input.

    Examples
    --------
    >>> pearson_r([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    0.9933992677987828
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_pearson(t, p)) if t.size >= 2 else float("nan")


def nse(y_true, y_pred) -> float:
    """Nash-Sutcliffe efficiency, ``1 - sum((y_pred - y_true)**2) / sum((y_true - mean(y_true))**2)``.

    1 is perfect, 0 is no better than the observed mean, negative is worse.

    Examples
    --------
    >>> nse([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    0.5
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_nse(t, p)) if t.size >= 2 else float("nan")


def kge(y_true, y_pred) -> float:
    """Kling-Gupta efficiency, 2012 version: ``1 - sqrt((r - 1)**2 + (beta - 1)**2 + (gamma - 1)**2)``.

    ``r`` is the Pearson correlation, ``beta = mean(y_pred) / mean(y_true)`` and
    ``gamma = CV(y_pred) / CV(y_true)`` the ratio of coefficients of variation
    (standard deviations with ``ddof=0``, as in hydroeval). The ratios assume a
    variable with a meaningful zero (precipitation, soil moisture, LST in K,
    concentrations); with temperatures in degrees Celsius KGE is not meaningful.

    Examples
    --------
    >>> kge([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])   # r = 1, beta = 2, gamma = 1
    0.0
    """
    t, p = _valid_pairs(y_true, y_pred)
    return _scalar(_kge(t, p)) if t.size >= 2 else float("nan")


def gdown(y_true, y_pred, y_coarse) -> float:
    """Downscaling gain GDOWN of Merlin et al. (2015): is the fine field better than the coarse one at the stations?

    With ``R`` the Pearson correlation, ``B`` the mean bias and ``S`` the slope
    of the least-squares line of the satellite product against the stations
    (``y = a + S * y_true``), computed once for the downscaled values
    (``DOWN``) and once for the coarse values at the same points (``NO``, no
    downscaling), the gains are::

        G_R = (|1 - R_NO| - |1 - R_DOWN|) / (|1 - R_NO| + |1 - R_DOWN|)
        G_B = (|B_NO|     - |B_DOWN|)     / (|B_NO|     + |B_DOWN|)
        G_S = (|1 - S_NO| - |1 - S_DOWN|) / (|1 - S_NO| + |1 - S_DOWN|)
        GDOWN = (G_R + G_B + G_S) / 3

    Each gain lies in [-1, 1]: positive when downscaling brings the statistic
    closer to its ideal value, negative when it moves away. A gain whose two
    terms are both zero (both fields already perfect on that statistic) is 0.

    Parameters
    ----------
    y_true : array-like
        Observations (stations).
    y_pred : array-like
        Downscaled values at the stations.
    y_coarse : array-like
        Coarse (not downscaled) values at the same stations and times.

    Examples
    --------
    >>> obs = [1.0, 2.0, 3.0, 4.0]
    >>> gdown(obs, obs, [2.0, 3.0, 3.0, 4.0])   # a perfect fine field: all three gains are 1
    1.0
    >>> gdown(obs, [2.0, 3.0, 3.0, 4.0], obs)
    -1.0
    """
    t, p, c = _valid_pairs(y_true, y_pred, y_coarse)
    return _scalar(_gdown(t, p, c)) if t.size >= 2 else float("nan")


#: Vectorised kernels of the public metrics (used by :func:`bootstrap_ci` to resample fast).
_KERNELS = {
    rmse: (_rmse, 1),
    mae: (_mae, 1),
    bias: (_bias, 1),
    ubrmse: (_ubrmse, 1),
    pearson_r: (_pearson, 2),
    nse: (_nse, 2),
    kge: (_kge, 2),
    gdown: (_gdown, 2),
}


def bootstrap_ci(
    metric,
    y_true,
    y_pred,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    *,
    y_coarse=None,
    groups=None,
):
    """Percentile bootstrap confidence interval ``(low, high)`` of a metric.

    Pairs are resampled with replacement ``n_boot`` times and the metric is
    recomputed on each resample; the interval spans the central ``level``
    fraction of those values. With ``groups`` (e.g. station identifiers when
    each station has several times) whole groups are resampled, which keeps
    the interval honest when the values of a group are correlated.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_pred)``, e.g. :func:`rmse`; :func:`gdown` needs ``y_coarse``.
    y_true, y_pred : array-like
        Paired values; NaN pairs are dropped first.
    n_boot : int
        Number of bootstrap resamples.
    level : float
        Confidence level, between 0 and 1.
    seed : int
        Seed of the random generator (the interval is reproducible).
    y_coarse : array-like, optional
        Third paired input, for :func:`gdown`.
    groups : array-like, optional
        Group label of each pair; groups are resampled as wholes.

    Returns
    -------
    (float, float)
        Lower and upper bounds; NaN when there are too few valid pairs.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> obs = rng.normal(size=200)
    >>> low, high = bootstrap_ci(bias, obs, obs + 0.5 + 0.1 * rng.normal(size=200))
    >>> bool(low < 0.5 < high)
    True
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.9 for a 90 % interval), got {level!r}.")
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be a positive number of resamples, got {n_boot}.")
    if metric is gdown and y_coarse is None:
        raise ValueError(
            "gdown needs the coarse values: pass bootstrap_ci(gdown, y_true, y_pred, y_coarse=...)."
        )
    arrays = [y_true, y_pred] + ([y_coarse] if y_coarse is not None else [])
    if groups is not None:
        group_labels = np.asarray(groups).ravel()
        arrays.append(np.unique(group_labels, return_inverse=True)[1].astype(np.float64))
    clean = _valid_pairs(*arrays, names=("y_true", "y_pred", "y_coarse", "groups")[: len(arrays)])
    if groups is not None:
        group_index = clean.pop().astype(np.int64)
    n = clean[0].size
    kernel, minimum = _KERNELS.get(metric, (None, 2))
    if n < max(minimum, 2):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        indices = [rng.integers(0, n, size=n) for _ in range(n_boot)]
    else:
        _, group_index = np.unique(group_index, return_inverse=True)
        members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
        indices = []
        for _ in range(n_boot):
            picked = rng.integers(0, len(members), size=len(members))
            indices.append(np.concatenate([members[g] for g in picked]))
    if kernel is not None and groups is None:
        index = np.stack(indices)
        values = kernel(*(a[index] for a in clean))
    elif kernel is not None:
        values = np.array([kernel(*(a[i] for a in clean)) for i in indices])
    else:
        values = np.array([metric(*(a[i] for a in clean)) for i in indices], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
