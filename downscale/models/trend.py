"""Pixel-level trend regressors tuned for coarse training sets, and the factory that names them.

The trend of a :class:`~downscale.Downscaler` is fitted on the valid *coarse*
pixels of a scene: a few hundred to a few thousand rows. Library defaults are
made for much larger tables (LightGBM's ``min_child_samples=20`` and
``num_leaves=31`` leave a 250-row table with a handful of splits), so the
estimators here carry small-sample defaults. The trend is then applied to
*fine* pixels, whose covariates spread far wider than their block means (a fine
slope or curvature is not bounded by the coarse ones): the linear trend clips
its inputs to the range seen in training so it cannot extrapolate wildly, and
it leaves out covariates that the ones before them predict almost exactly
(:class:`DropCollinear`: oblique coordinates are linear combinations of easting
and northing, longitude and latitude nearly are on a projected grid), which
a linear model can only split coefficients between, large and of opposite
signs. Measured on the four default synthetic scenes (RMSE against the fine
truth, 11 covariates with the location set vs 5 without the redundant ones):
LST 0.464 vs 0.460, precipitation 2.34 vs 2.26, NO2 4.89 vs 4.78, soil
moisture 0.0532 vs 0.0533.

Fine covariates that their block means do not represent
----------------------------------------------------------
A covariate whose block means keep only a small part of its fine-scale
spread (curvatures, small-radius TPI: their coarse standard deviation is 3 %
of the fine one on a 25 x 25 block) cannot have its fine-scale effect learned
from coarse cells. A slope fitted on block means that vary by +-1 applied to
fine values that vary by +-30 turns into pure fine-scale noise, which no
residual kriging removes (it only corrects block means). :func:`retention`
measures that ratio and ``MIN_RETENTION`` gives the least ratio a covariate
needs for each named trend: a linear trend extrapolates proportionally and
needs covariates that keep half of their spread; trees saturate at the
training range and tolerate more.

Every estimator here passes scikit-learn's ``parametrize_with_checks``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone, is_regressor
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

__all__ = [
    "MIN_RETENTION",
    "TREND_NAMES",
    "ClipToRange",
    "DropCollinear",
    "LightGBMTrend",
    "ShrunkTrend",
    "boosting_rounds",
    "make_trend",
    "retention",
]

#: Names accepted by :func:`make_trend` (besides any scikit-learn regressor instance).
TREND_NAMES = ("auto", "lightgbm", "rf", "linear", "none")

#: Least ratio of coarse to fine standard deviation a covariate needs to enter a named trend.
MIN_RETENTION = {"linear": 0.5, "rf": 0.2, "lightgbm": 0.2, "none": 0.0}


def retention(fine_std, coarse_std):
    """Share of a covariate's fine-scale spread that its block means keep: ``coarse_std / fine_std``.

    A constant covariate (``fine_std == 0``) has retention 0: it carries no information.

    Examples
    --------
    >>> retention([2.0, 1.0, 0.0], [1.9, 0.03, 0.0]).round(2).tolist()
    [0.95, 0.03, 0.0]
    """
    fine_std = np.asarray(fine_std, dtype=np.float64)
    coarse_std = np.asarray(coarse_std, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(fine_std > 0, coarse_std / np.where(fine_std > 0, fine_std, 1.0), 0.0)
    return np.nan_to_num(ratio, nan=0.0)


def boosting_rounds(n_estimators: int, n: int = 20):
    """Round counts at which an early-stopping search scores a boosted trend: about ``n`` of them,
    evenly spaced in log from 1 to ``n_estimators`` (the first rounds change the fit most).

    Examples
    --------
    >>> boosting_rounds(300).tolist()
    [1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 37, 50, 67, 90, 122, 165, 222, 300]
    >>> boosting_rounds(3).tolist()
    [1, 2, 3]
    """
    if int(n_estimators) < 1:
        raise ValueError(f"n_estimators must be at least 1, got {n_estimators!r}.")
    return np.unique(np.round(np.geomspace(1, int(n_estimators), n)).astype(int))


class LightGBMTrend(RegressorMixin, BaseEstimator):
    """Gradient-boosted trees (LightGBM) with defaults for a few hundred to a few thousand training rows.

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, min_child_samples, subsample, colsample_bytree, reg_lambda
        As in :class:`lightgbm.LGBMRegressor`; the defaults (300 trees at 0.05, 15 leaves, 5 samples per
        leaf, 80 % row and column subsampling, L2 penalty 1) suit small coarse training sets.
    n_jobs : int
        Threads (1 by default: the trend is small, and tiles run in parallel above it).
    random_state : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(size=(300, 2))
    >>> y = np.where(X[:, 0] > 0.5, 1.0, 0.0) + 0.01 * rng.standard_normal(300)
    >>> model = LightGBMTrend().fit(X, y)
    >>> model.predict([[0.9, 0.5], [0.1, 0.5]]).round(1).tolist()
    [1.0, 0.0]
    """

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 5,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        n_jobs: int = 1,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        from lightgbm import LGBMRegressor

        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
            if not np.any(sample_weight > 0):
                raise ValueError("Sample weights must contain at least one positive value; all are zero.")
        self.booster_ = LGBMRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            # Tiny tables: let a leaf hold a few rows whatever their hessian sum.
            min_child_weight=1e-3,
            min_split_gain=0.0,
            subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1 else 0,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            verbose=-1,
        ).fit(X, y, sample_weight=sample_weight)
        return self

    def predict(self, X):
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.booster_.predict(X)

    def staged_predict(self, X, rounds):
        """Predictions of the first ``rounds[i]`` boosting rounds, one row per entry of ``rounds``.

        Boosting is sequential, so the first ``k`` trees of this model are the model that
        ``n_estimators=k`` would have fitted: one fit gives the whole validation curve (how
        :class:`~downscale.Downscaler` chooses the number of rounds).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        rounds : sequence of int
            Round counts, each from 1 to ``n_estimators``.

        Returns
        -------
        numpy.ndarray of shape (len(rounds), n_samples)

        Examples
        --------
        >>> import numpy as np
        >>> X = np.linspace(0, 1, 200)[:, None]
        >>> model = LightGBMTrend(n_estimators=50).fit(X, np.where(X[:, 0] > 0.5, 1.0, 0.0))
        >>> staged = model.staged_predict([[0.9]], rounds=[1, 50])
        >>> staged.shape, bool(staged[0, 0] < staged[1, 0])    # one round at learning rate 0.05 moves little
        ((2, 1), True)
        """
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        rounds = [int(k) for k in rounds]
        if any(k < 1 or k > self.n_estimators for k in rounds):
            raise ValueError(f"rounds must be from 1 to n_estimators={self.n_estimators}, got {rounds}.")
        return np.stack([self.booster_.predict(X, num_iteration=k) for k in rounds])


class ShrunkTrend(RegressorMixin, BaseEstimator):
    """A trend shrunk toward the constant mean: ``mean + weight * (estimator(X) - mean)``.

    The :class:`~downscale.Downscaler` uses it when spatial cross-validation
    finds that the covariates explain the coarse field only in part
    (``weight`` < 1), so that the choice between a covariate trend and the
    constant is not all or nothing.

    Parameters
    ----------
    estimator : scikit-learn regressor or trend name (see :func:`make_trend`)
    weight : float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(10.0)[:, None]
    >>> model = ShrunkTrend("linear", weight=0.5).fit(X, 2 * X[:, 0])
    >>> model.predict([[0.0], [9.0]]).round(6).tolist()      # halfway between the line and the mean 9
    [4.5, 13.5]
    """

    def __init__(self, estimator="linear", weight: float = 1.0):
        self.estimator = estimator
        self.weight = weight

    def fit(self, X, y):
        if not 0.0 <= float(self.weight) <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight!r}.")
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        self.mean_ = float(np.mean(y))
        self.estimator_ = make_trend(self.estimator).fit(X, y)
        return self

    def predict(self, X):
        check_is_fitted(self, "estimator_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.mean_ + float(self.weight) * (self.estimator_.predict(X) - self.mean_)


class ClipToRange(TransformerMixin, BaseEstimator):
    """Clip every feature to the range seen in ``fit``: a guard against extrapolating a linear trend.

    Examples
    --------
    >>> ClipToRange().fit([[0.0], [1.0]]).transform([[-3.0], [0.5], [7.0]]).ravel().tolist()
    [0.0, 0.5, 1.0]
    """

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        self.data_min_ = X.min(axis=0)
        self.data_max_ = X.max(axis=0)
        return self

    def transform(self, X):
        check_is_fitted(self, "data_min_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return np.clip(X, self.data_min_, self.data_max_)


class DropCollinear(TransformerMixin, BaseEstimator):
    """Keep only the features that the ones kept before them do not predict almost exactly.

    Going through the columns in order, a feature is left out when a least-squares fit on the
    features kept so far explains at least ``max_r2`` of its variance (or when it is constant). A
    linear model gains nothing from such a feature: it can only split a coefficient between near
    copies, which makes the coefficients (and their SHAP values) meaningless.

    Parameters
    ----------
    max_r2 : float
        Share of a feature's variance above which it counts as a combination of the others.

    Attributes
    ----------
    support_ : ndarray of bool
        The features kept.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(2, 50))
    >>> X = np.column_stack([a, b, 0.5 * a - 2 * b, rng.normal(size=50)])
    >>> DropCollinear().fit(X).support_.tolist()    # the third is a combination of the first two
    [True, True, False, True]
    """

    def __init__(self, max_r2: float = 0.999):
        self.max_r2 = max_r2

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        centred = X - X.mean(axis=0)
        scale = np.sqrt((centred**2).mean(axis=0))
        support = np.zeros(X.shape[1], dtype=bool)
        for j in range(X.shape[1]):
            if not scale[j] > 0:
                continue
            column = centred[:, j] / scale[j]
            if support.any():
                kept = centred[:, support] / scale[support]
                coef = np.linalg.lstsq(kept, column, rcond=None)[0]
                explained = 1.0 - np.mean((column - kept @ coef) ** 2)
                if explained >= self.max_r2:
                    continue
            support[j] = True
        if not support.any():  # all constant: keep the first, the model then predicts the mean
            support[0] = True
        self.support_ = support
        return self

    def transform(self, X):
        check_is_fitted(self, "support_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X[:, self.support_]


def make_trend(spec="lightgbm", random_state=0, n_jobs: int = 1):
    """Return an unfitted scikit-learn regressor for a trend ``spec``.

    Parameters
    ----------
    spec : {"lightgbm", "rf", "linear", "none"} or scikit-learn regressor
        (``"auto"`` is a choice the :class:`~downscale.Downscaler` makes among these; it is not a model.)
        ``"lightgbm"``: :class:`LightGBMTrend`. ``"rf"``: a
        :class:`~sklearn.ensemble.RandomForestRegressor` (300 trees, 2 samples per leaf, half the
        features per split). ``"linear"``: ridge regression with the penalty chosen by
        leave-one-out, on standardized features clipped to their training range, without those that
        the others predict almost exactly (:class:`DropCollinear`). ``"none"``: the
        constant mean (what remains is kriging of the field itself). A regressor instance is cloned.
    random_state : int or None
    n_jobs : int

    Examples
    --------
    >>> make_trend("none")
    DummyRegressor()
    >>> type(make_trend("rf")).__name__
    'RandomForestRegressor'
    """
    if isinstance(spec, str):
        if spec == "lightgbm":
            return LightGBMTrend(random_state=random_state, n_jobs=n_jobs)
        if spec == "rf":
            return RandomForestRegressor(
                n_estimators=300,
                min_samples_leaf=2,
                max_features=0.5,
                n_jobs=n_jobs,
                random_state=random_state,
            )
        if spec == "linear":
            return make_pipeline(
                DropCollinear(), ClipToRange(), StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))
            )
        if spec == "none":
            return DummyRegressor(strategy="mean")
        if spec == "auto":
            raise ValueError(
                "trend='auto' is a selection among 'none', 'linear', 'rf' and 'lightgbm' made by "
                "downscale.Downscaler.fit; give make_trend one of those names."
            )
        raise ValueError(
            f"trend must be one of {TREND_NAMES} or a scikit-learn regressor instance, got {spec!r}."
        )
    if not (hasattr(spec, "fit") and hasattr(spec, "predict")):
        raise TypeError(
            f"trend must be one of {TREND_NAMES} or a scikit-learn regressor with fit/predict, got "
            f"{type(spec).__name__}."
        )
    if not is_regressor(spec):
        # Pipelines and third-party estimators may not declare themselves; accept anything that fits.
        pass
    return clone(spec)
