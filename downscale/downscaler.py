"""The Downscaler: area-to-point regression kriging (trend + coherent residual kriging), a scikit-learn estimator.

The method (see DESIGN.md)::

    z            = transform(coarse)                         log1p / logit for skewed or bounded variables
    trend        f(block means of X) ~ z  on the valid coarse cells
    trend_fine   = f(fine X)
    residual_c   = z - block_mean(trend_fine)                block mean of the FINE trend
    residual_f   = ATPK(residual_c)                          area-to-point kriging, coherent
    fine         = correction(inverse(trend_fine + residual_f))   exact block means, within the bounds

The last step is :func:`downscale.models.coherent_correction`: a per-block
affine blend toward one bound that makes ``grid.block_mean(fine) == coarse``
exactly while keeping every pixel in the physical range (precipitation stays
>= 0 and dry coarse cells stay dry; soil moisture stays within [0, porosity]).

Uncertainty (``predict(X, return_std=True)``)
----------------------------------------------
In the transformed space the prediction error has two parts: what kriging
cannot recover from the coarse residuals (the ATPK variance) and what the
trend gets wrong below the coarse scale. The standard deviation is
``std_z = scale * sqrt(kriging_variance + trend_variance)`` carried to the
variable with the delta method (``std = std_z * |d inverse / dz|``). The
``trend_variance`` is the variance of out-of-fold coarse residuals of the
trend under spatial block cross-validation, minus what kriging explains at
the coarse scale (the in-sample residual variance), floored at zero. The
``scale`` is a split-conformal calibration, from one of two sources:

- *stations*, when ``fit`` is given some: ``scale`` makes nominal 90 % intervals
  hold 90 % of the station values (:func:`downscale.validation.calibrate_std`).
  This is the better source whenever there are a few dozen stations: only
  they see the error below the coarse scale.
- otherwise *the Wald protocol*: the same method is run one level up (the
  coarse field averaged over 2 x 2 cells is downscaled back to the coarse
  grid, with the coarse covariates as fine ones), and ``scale`` makes nominal
  90 % intervals cover 90 % of the coarse cells there. This assumes that the
  model's misfit is similar one scale up, and it is blind to what varies
  inside a coarse cell: one level up the covariates are block means. So the
  protocol may only narrow the std (scale < 1) when the fine trend varies
  mostly between coarse cells: when more than ``WALD_MAX_WITHIN_SHARE``
  (10 %) of its variance lies inside them (``trend_within_share_``), the
  scale stays 1 (``wald_scale_`` keeps what the protocol said). Measured on
  the default scenes, seeds 0-2, trend="lightgbm" and the default: soil
  moisture 0.14-0.39 (its detail follows the LST's pixels, the wetness
  index, slope), LST, NO2 and precipitation 0-0.075. Before this guard, the
  soil-moisture intervals held 30-55 % of the truth (Wald scale 0.27-0.39,
  where 0.86-1.44 was right); with it 84-94 %.

The skill tests check the coverage of 90 % intervals against fine truth with
both sources (``tests/test_skill.py``).

Stations in the trend (``fit(..., stations=...)``)
--------------------------------------------------
Coarse cells cannot teach the trend a fine-scale covariate effect whose
block means hardly vary (valley-bottom wetness under soil moisture). A
station can: it samples the fine covariates at a point. With
``station_trend="auto"`` (the default), the stations given to ``fit`` join
the coarse cells as rows of the trend (one row per station value, its fine
covariates and its transformed value, weighted as one coarse cell), when
that predicts held-out stations better:

1. the stations' locations are split into ``STATION_FOLDS`` (5) folds
   (random, ``random_state``); each fold is predicted by the whole method
   (trend on the coarse cells plus the other folds' stations, then ATPK of
   the coarse residuals) and compared with the fit on the coarse cells alone
   (whose error at every station is already held out);
2. the stations join when the gain is larger than its noise: the per-station
   drop in squared error (averaged over a station's records), in standard
   errors of its mean, must exceed ``STATION_GAIN_STANDARD_ERRORS`` (1: the
   one-standard-error rule of model selection, which keeps the simpler fit
   unless the richer one is better by more than the noise of the
   comparison); ``station_cv_`` holds both held-out RMSEs and the gain;
3. the trend they join is the named one (or the one ``"auto"`` chose),
   unshrunk, on every covariate (down to ``min_retention`` when it is
   given): the stations are there to inform the covariates the coarse cells
   could not.

The result stays coherent (the residual kriging is the same). The std is
then calibrated on the held-out errors of step 1, each station by the fit
that left it out (cross-conformal), not in-sample. Measured on the four
default scenes with their 40 stations, ``trend="auto"``, seeds 0-9 (RMSE /
bilinear): the stations join on soil moisture at seeds 0, 1, 2 and 6 (0.963
-> 0.698, 0.947 -> 0.640, 0.966 -> 0.663, 0.939 -> 0.829) and on NO2 at
seed 8 (0.851 -> 0.844), never on LST or precipitation, and they never made
the result worse. A 2 % margin on the held-out RMSE instead of the
one-standard-error rule let them join 11 times, 3 of them for the worse
(soil moisture seed 3: 0.926 -> 1.029).

Choosing the trend (``trend="auto"``, the default)
---------------------------------------------------
With a few hundred coarse cells a flexible trend overfits, and covariates
that explain the coarse field do not always explain its fine detail. The
default therefore picks among ``AUTO_CANDIDATES`` (none, i.e. ATPK of the
field itself; ridge regression; random forest; LightGBM) from the data:

1. *Covariates*: a candidate only sees the covariates whose block means keep
   enough of their fine spread (:func:`downscale.models.trend.retention` >=
   ``MIN_RETENTION[candidate]``): the fine-scale effect of a curvature whose
   block means vary 3 % as much as its pixels cannot be learned from coarse
   cells, and applying a trend to it only injects noise (``features_used_``).
   A trend given by name is filtered the same way (``min_retention``).
2. *Spatial cross-validation on the coarse cells*: blocks of
   ``SELECTION_BLOCK_CELLS`` x ``SELECTION_BLOCK_CELLS`` cells form
   ``cv_splits`` folds; every held-out cell is predicted by regression
   kriging from the other folds (the candidate's trend plus ordinary kriging
   of the training residuals from the ``SELECTION_NEIGHBOURS`` nearest cells).
3. *Shrinkage*: with weights that sum to one, the out-of-fold error of the
   trend shrunk toward the mean, ``mean + w (f - mean)``, is exactly
   ``a - w b`` (``a``: the error of kriging the field alone, ``b``: the trend
   minus its kriged value). The weight ``w`` is the least-squares solution
   ``sum(a b) / sum(b b)`` clipped to [0, 1]: the blend weight from the CV
   residuals (``trend_weight_``). A named trend gets the same weight with
   ``trend_weight="cv"`` (steps 2 and 3 for that trend alone); by default it
   is used as fitted (after early stopping, below).
4. *Wald check*, when the 2 x 2 means of the coarse field leave at least
   ``WALD_MIN_CELLS`` cells along each axis: every (shrunk) candidate
   downscales those means back onto the coarse grid and is scored against
   the coarse field, which tests what the first two steps cannot: the trend
   applied one scale finer than where it was fitted. The degradation is by 2,
   not by the downscaling factor: degrading a 16 x 16 coarse scene by 25
   leaves nothing, and even by 5 only 3 x 3 cells, too few to rank anything.
5. *Combination and tie rule*: each signal is a ratio to the constant
   trend's RMSE (transformed space); a candidate's ``score`` is the larger of
   its two ratios (it must help on both to count as helping). The choice is
   the simplest candidate (order none < linear < rf < lightgbm) whose score
   is within ``SELECTION_TOLERANCE`` (2 %) of the best; a weight of 0 is the
   constant trend. ``cv_results_`` holds the table; ``selected_trend_`` the
   choice. With fewer than ``MIN_CELLS_SELECTION`` valid cells the constant
   trend is kept without a selection.

Boosting rounds of ``trend="lightgbm"`` (``early_stopping=True``)
-----------------------------------------------------------------
The number of rounds is how much a boosted trend may learn from a few
hundred coarse cells, and no fixed number suits every field: the terrain
explains most of a coarse LST field and nothing of a storm's. A named
``"lightgbm"`` trend therefore stops early, with the spatial cross-validation
of steps 2 and 3 above as the validation set: one LightGBM fit per fold
gives the out-of-fold regression-kriging error after every round count of
:func:`~downscale.models.trend.boosting_rounds` (1 to 300, evenly spaced in
log, from :meth:`~downscale.models.trend.LightGBMTrend.staged_predict`) and
after zero rounds (the mean, LightGBM's starting point); the least sets
``n_rounds_`` (``rounds_cv_`` holds the curve). Zero rounds makes the trend
the constant, the result ATPK of the field, and says so in a warning.
Measured at seed 0 (RMSE / bilinear, 300 rounds -> stopped early): LST
0.745 -> 0.728 (67 rounds), precipitation 0.913 -> 0.513 (0 rounds), NO2
0.772 -> 0.772 (300), soil moisture with its LST 0.744 -> 0.790 (67),
without it 0.856 -> 0.931 (20): the coarse cells undervalue what the trees
draw from slope and TPI at 1 km. With ``trend_weight="cv"`` the weight is
estimated for the stopped trees, on the same folds. ``trend="auto"``
scores its LightGBM candidate at 300 rounds and shrinks it instead; the
stations, when they join a trend, join it with all its rounds.

Masks and missing data
----------------------
NaN coarse cells are left out of fitting and kriging. Their fine pixels get the
trend plus a smooth fill of the neighbouring residuals (and the residual sill
as variance); they are NaN only where ``mask`` says so. ``mask`` (a boolean
fine grid, true where a value is wanted, or ``"coarse"`` to follow the NaN
pattern of the coarse field, as for land-only variables) restricts the output
and the block means: coherence then holds over the masked pixels of each cell.
The output is also NaN where a fine covariate is NaN.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from . import grid as grid_module
from .models.transforms import coherent_correction, make_transform
from .models.trend import MIN_RETENTION, TREND_NAMES, ShrunkTrend, boosting_rounds, make_trend, retention
from .validation.stations import conformal_scale

__all__ = ["Downscaler"]

logger = logging.getLogger(__name__)

#: Nominal coverage used by the Wald-protocol calibration of ``return_std``.
CALIBRATION_COVERAGE = 0.9
_Z90 = 1.6448536269514722

#: Fewest valid coarse cells accepted for a fit without and with residual kriging.
MIN_CELLS_TREND = 3
MIN_CELLS_KRIGING = 10

#: Candidates of ``trend="auto"``, simplest first: the tie rule prefers the earlier one.
AUTO_CANDIDATES = ("none", "linear", "rf", "lightgbm")
#: Side (in coarse cells) of the spatial blocks of the selection's cross-validation.
SELECTION_BLOCK_CELLS = 3
#: A candidate whose score is within this fraction of the best one's counts as tied with it.
SELECTION_TOLERANCE = 0.02
#: Fewest valid coarse cells for a selection by cross-validation (below it: the constant trend).
MIN_CELLS_SELECTION = 30
#: Time steps used by the selection (evenly spaced), to bound its cost on long series.
MAX_SELECTION_STEPS = 4
#: Fewest cells along each axis of the 2 x 2 degraded grid for the Wald check of the selection.
WALD_MIN_CELLS = 6
#: Share of the fine trend's variance inside the coarse cells above which the Wald protocol may not narrow
#: the std: one level up it sees block means, and cannot speak for that part (module notes).
WALD_MAX_WITHIN_SHARE = 0.1
#: Fewest usable station values for fitting the trend on them too (two per fold).
MIN_STATION_RECORDS = 10
#: Folds of station locations that decide whether the stations join the trend.
STATION_FOLDS = 5
#: The stations join the trend when their held-out squared-error gain exceeds this many standard errors.
STATION_GAIN_STANDARD_ERRORS = 1.0
#: Nearest training cells used by the coarse-level kriging of the selection.
SELECTION_NEIGHBOURS = 25
#: Trees of the random forests fitted in the selection's folds.
SELECTION_FOREST_TREES = 100


class Downscaler(BaseEstimator):
    """Downscale a coarse field onto a fine grid: trend on covariates + coherent residual kriging.

    Parameters
    ----------
    trend : {"auto", "lightgbm", "rf", "linear", "none"} or scikit-learn regressor
        Trend model fitted on the valid coarse cells (see :func:`downscale.models.make_trend`).
        ``"none"`` is a constant mean: the result is then ATPK of the field itself. ``"auto"`` (the
        default) chooses among these by spatial cross-validation and a Wald check, shrinks the choice
        toward the constant, and leaves out covariates the coarse cells cannot inform (module notes).
    residual : {"atpk", "none"}
        ``"atpk"``: area-to-point kriging of the coarse residuals (coherent result).
        ``"none"``: the trend alone (for comparison; not coherent).
    transform : {"auto", "none", "log1p", "logit"}
        Space in which the trend is fitted and residuals kriged. ``"auto"``: ``log1p`` for a
        lower bound only, a logit scaled to ``[low, high]`` for two bounds, none otherwise.
    bounds : (float or None, float or None), optional
        Physical range of the variable. Default: the coarse field's ``valid_min`` / ``valid_max``
        attributes, else unbounded.
    temporal : {"per_step", "pooled"}
        With a time axis: one trend and one variogram per time step (the default, right for
        precipitation events), or one trend fitted on all time steps together (time-varying
        covariates carry the changes) with a pooled variogram.
    variogram : str
        Variogram family of the residual kriging (see :class:`downscale.kriging.ATPK`).
    neighbours : int
        Side of the kriging window in coarse cells.
    calibrate_std : bool
        Calibrate ``return_std``: at the stations given to :meth:`fit` (split conformal), else by the
        Wald protocol (see the module notes). Otherwise the scale is 1.
    cv_splits : int
        Spatial block folds used to estimate the trend's out-of-fold error.
    station_trend : {"auto", True, False}
        Whether the stations given to :meth:`fit` join the coarse cells in the trend's fit.
        ``"auto"`` (default): when that predicts held-out stations better (see the module notes);
        ``True``: always (with a warning when they cannot: fewer than ``MIN_STATION_RECORDS``
        usable values, or the constant trend); ``False``: they only calibrate the std.
    trend_weight : None, "cv" or float in [0, 1]
        Weight ``w`` of the trend against the constant mean, ``mean + w (f - mean)``. ``None`` (the
        default): the spatial cross-validation's blend weight for ``trend="auto"`` (module notes,
        step 3), and 1 (the trend as fitted) for a named trend. ``"cv"``: that blend weight for a named
        trend too, from the same cross-validation on the coarse cells (``cv_results_`` then holds it
        against the constant trend): a flexible trend whose gain on held-out cells is small is shrunk
        toward the mean. A number: that weight (not with ``"auto"``).
    early_stopping : bool
        With ``trend="lightgbm"`` (by name), choose the number of boosting rounds by the spatial
        cross-validation on the coarse cells (``True``, the default): LightGBM's early stopping, with the
        held-out spatial blocks as the validation set and the regression-kriging error as the score
        (module notes). A coarse field the covariates do not explain then keeps few rounds, close to
        the constant mean: ATPK of the field. ``False``: ``LightGBMTrend``'s 300 rounds. Other trends
        (and a ``LightGBMTrend`` instance, whose ``n_estimators`` is the user's) are not affected.
    min_retention : float or None
        Least :func:`~downscale.models.trend.retention` (coarse over fine spread) a covariate needs to
        enter the trend. ``None`` (default): ``MIN_RETENTION`` of the named trend (0.5 for ``"linear"``,
        0.2 for ``"rf"`` and ``"lightgbm"``, each candidate's own with ``"auto"``) and 0 for a regressor
        instance; ``0`` keeps every covariate. Measured on the four default scenes (RMSE against
        truth, every covariate vs the filtered ones): lightgbm LST 0.728 vs 0.675, precipitation 4.06 vs
        3.84; linear LST 1.28 vs 0.46, precipitation 18.3 vs 2.34 (a slope fitted on block means that
        barely vary, applied to pixels that vary 30 times more).
    random_state : int or None
    n_jobs : int
        Threads of the trend model.

    Attributes
    ----------
    feature_names_ : list of str
        Every covariate of ``X`` seen in fit (``feature_names_in_``: the same as an array); ``predict``
        needs them all.
    features_used_ : list of str
        The covariates the trend uses (all of them unless ``trend="auto"`` left some out).
    retention_ : numpy.ndarray
        Block-mean to fine standard deviation of every covariate (see
        :func:`downscale.models.trend.retention`).
    selected_trend_ : str
        The trend used: the choice of ``trend="auto"``, else ``trend`` (a class name for an instance).
    trend_weight_ : float
        Weight of the trend against the constant mean (below 1 when ``"auto"`` or
        ``trend_weight`` shrank it).
    n_rounds_ : int or None
        Boosting rounds of ``trend="lightgbm"`` chosen by ``early_stopping`` (None otherwise, and when
        stations joined the trend: it then keeps its 300 rounds).
    rounds_cv_ : pandas.DataFrame or None
        The early-stopping curve: ``n_rounds``, ``cv_rmse`` (out-of-fold, transformed space), ``selected``.
    cv_results_ : pandas.DataFrame or None
        With ``trend="auto"`` (or a named trend with ``trend_weight="cv"``: the constant and that
        trend, without the Wald columns): one row per candidate, columns ``trend``, ``n_features``, ``weight``,
        ``cv_rmse`` (shrunk), ``cv_rmse_unshrunk``, ``wald_rmse`` (NaN when the scene is too small or
        the cross-validation already ruled the candidate out),
        ``score`` and ``selected``. RMSEs are in the transformed space.
    factor_ : int
    bounds_ : tuple
    transform_ : transform object (see :mod:`downscale.models.transforms`)
    trend_models_ : list of fitted regressors (one per time step, or one when pooled)
    atpk_ : list of fitted :class:`downscale.kriging.ATPK` (empty with ``residual="none"``)
    residual_coarse_ : xarray.DataArray, coarse residuals in the transformed space
    trend_variance_ : numpy.ndarray, one value per time step (transformed space)
        Computed on first use (``predict(..., return_std=True)``): its spatial cross-validation refits
        the trend, a cost a prediction without std does not pay.
    std_scale_ : float, the calibration factor of the standard deviation
    wald_scale_ : float or None
        The Wald protocol's scale, before the guard that keeps ``std_scale_`` at 1 when the trend varies
        inside the coarse cells (module notes); None when the protocol did not set the scale.
    trend_within_share_ : float
        Share of the fine trend's variance (transformed space) that lies inside the coarse cells:
        ``var(trend - its block means) / var(trend)`` (:func:`within_cell_share`).
    std_calibration_ : {"stations", "wald", "none"}
        What set ``std_scale_``: the stations given to :meth:`fit`, the Wald protocol, or nothing.
    std_scale_stations_ : int
        How many station values set ``std_scale_`` (0 without stations).
    station_trend_ : bool
        Whether the trend was fitted on the station values too.
    station_cv_ : pandas.DataFrame or None
        With stations, ``station_trend="auto"`` or ``True``, a trend other than ``"none"`` and at least
        ``MIN_STATION_RECORDS`` usable station values: the held-out station RMSE (the field's
        units) of the trend fitted on the coarse cells alone and on the coarse cells plus the
        stations, columns ``trend_fitted_on``, ``trend``, ``n_features``, ``station_rmse``,
        ``n_values``, ``gain_in_standard_errors`` (of the drop in squared error; the stations join
        above 1) and ``selected``.
    station_values_ : int
        How many station values the trend was fitted on (0 unless ``station_trend_``).
    station_rows_ : pandas.DataFrame or None
        Those trend rows (None unless ``station_trend_``): every covariate at the station's pixel,
        its ``time_index`` and the pixel centre ``x``, ``y``.

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("precipitation", seed=0, shape=(120, 120), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True, tpi_radii=(5000.0,))
    >>> model = Downscaler(trend="linear", calibrate_std=False).fit(scene.coarse, X)
    >>> fine = model.predict(X)
    >>> bool((fine >= 0).all()), fine.attrs["units"]
    (True, 'mm')
    >>> back = ds.grid.block_mean(fine, 10)
    >>> bool(abs(back - scene.coarse).max() < 1e-9)
    True

    The default chooses the trend and says why:

    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(200, 200), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
    >>> model = Downscaler(calibrate_std=False).fit(scene.coarse, X, mask=scene.mask)
    >>> model.cv_results_["trend"].tolist()
    ['none', 'linear', 'rf', 'lightgbm']
    >>> model.selected_trend_ != "none"                 # LST follows elevation and vegetation
    True
    >>> "profile_curvature" in model.features_used_     # its block means keep 13 % of its spread
    False

    With stations, ``return_std`` is calibrated at them (their own noise left out) instead of by the
    Wald protocol:

    >>> model = Downscaler(trend="linear").fit(
    ...     scene.coarse, X, mask=scene.mask, stations=scene.stations, station_noise="noise_std")
    >>> model.std_calibration_, model.std_scale_stations_
    ('stations', 40)
    >>> model.station_cv_.columns.tolist()[:4]          # the stations joined the trend, or did not, and why
    ['trend_fitted_on', 'trend', 'n_features', 'station_rmse']
    """

    def __init__(
        self,
        trend="auto",
        residual: str = "atpk",
        transform: str = "auto",
        bounds=None,
        temporal: str = "per_step",
        variogram: str = "exponential",
        neighbours: int = 5,
        calibrate_std: bool = True,
        cv_splits: int = 5,
        min_retention=None,
        station_trend="auto",
        trend_weight=None,
        early_stopping: bool = True,
        random_state=0,
        n_jobs: int = 1,
    ):
        self.trend = trend
        self.residual = residual
        self.transform = transform
        self.bounds = bounds
        self.temporal = temporal
        self.variogram = variogram
        self.neighbours = neighbours
        self.calibrate_std = calibrate_std
        self.cv_splits = cv_splits
        self.min_retention = min_retention
        self.station_trend = station_trend
        self.trend_weight = trend_weight
        self.early_stopping = early_stopping
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------ checking

    def _check_parameters(self):
        self._check_station_trend()
        self._check_trend_weight()
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise ValueError(
                f"early_stopping must be True (choose the boosting rounds of trend='lightgbm' by spatial "
                f"cross-validation) or False (LightGBMTrend's n_estimators), got {self.early_stopping!r}."
            )
        if self.residual not in ("atpk", "none"):
            raise ValueError(f"residual must be 'atpk' or 'none', got {self.residual!r}.")
        if self.temporal not in ("per_step", "pooled"):
            raise ValueError(f"temporal must be 'per_step' or 'pooled', got {self.temporal!r}.")
        if isinstance(self.trend, str) and self.trend not in TREND_NAMES:
            raise ValueError(
                f"trend must be one of {TREND_NAMES} or a scikit-learn regressor instance, got {self.trend!r}."
            )
        if not (isinstance(self.trend, str) and self.trend == "auto"):
            make_trend(self.trend)  # raises on a bad instance
        if self.min_retention is not None and not (
            isinstance(self.min_retention, (int, float)) and 0 <= self.min_retention <= 1
        ):
            raise ValueError(
                f"min_retention must be None (the trend's own threshold) or a number from 0 (keep every "
                f"covariate) to 1, got {self.min_retention!r}."
            )

    def _check_trend_weight(self):
        value = self.trend_weight
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (
            value is None or (isinstance(value, str) and value == "cv") or (is_number and 0 <= value <= 1)
        ):
            raise ValueError(
                f"trend_weight must be None (the default), 'cv' (the blend weight from spatial "
                f"cross-validation) or a number from 0 (the constant mean) to 1 (the trend as fitted), "
                f"got {value!r}."
            )
        if is_number and isinstance(self.trend, str) and self.trend == "auto":
            raise ValueError(
                f"trend_weight={value!r} with trend='auto': the selection estimates the weight of the trend "
                f"it chooses. Name a trend (e.g. trend='lightgbm') to fix its weight."
            )

    def _check_station_trend(self):
        value = self.station_trend
        if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
            raise ValueError(
                f"station_trend must be 'auto' (the stations given to fit join the trend when that predicts "
                f"held-out stations better), True or False, got {value!r}."
            )

    def _retention_threshold(self, trend):
        """Least retention a covariate needs to enter ``trend`` (a name or a regressor instance)."""
        if self.min_retention is not None:
            return float(self.min_retention)
        return MIN_RETENTION[trend] if isinstance(trend, str) else 0.0

    def _retained(self, names, trend):
        """The covariates ``names`` (in ``retention_`` order) whose retention lets them enter ``trend``."""
        threshold = self._retention_threshold(trend)
        return [n for n, r in zip(names, self.retention_, strict=True) if r >= threshold]

    def _named_trend_selection(self, variables):
        """What fit records for a trend given by ``trend`` (not chosen): its covariates, full weight."""
        threshold = self._retention_threshold(self.trend)
        used = self._retained(variables, self.trend)
        if not used and not (isinstance(self.trend, str) and self.trend == "none"):
            weakest = ", ".join(f"{n} {r:.2f}" for n, r in zip(variables, self.retention_, strict=True))
            raise ValueError(
                f"No covariate keeps {threshold:.0%} of its fine spread in its block means, which the "
                f"{self.trend!r} trend needs (retention: {weakest}): the coarse cells cannot teach it their "
                f"fine-scale effect. Use trend='none' (or 'auto'), add covariates with coarse-scale "
                f"structure, or set min_retention=0 to use them anyway."
            )
        self.trend_spec_ = self.trend
        self.selected_trend_ = self.trend if isinstance(self.trend, str) else type(self.trend).__name__
        self.trend_weight_ = 1.0
        self.cv_results_ = None
        self.n_rounds_ = None
        self.rounds_cv_ = None
        self.features_used_ = used if used else list(variables)

    def _choose_trend(self, coarse, features_coarse, z_coarse, steps, transform):
        """Set ``trend_spec_``, its weight and covariates: chosen with ``"auto"``, else the named trend
        (its boosting rounds chosen by ``early_stopping``, shrunk when ``trend_weight`` says so).
        ``features_coarse`` holds every covariate."""
        if isinstance(self.trend, str) and self.trend == "auto":
            self._select_trend(coarse, features_coarse, z_coarse, steps, transform)
            return
        self._named_trend_selection(self.feature_names_)
        if isinstance(self.trend, str) and self.trend == "none":
            return
        stop_early = bool(self.early_stopping) and isinstance(self.trend, str) and self.trend == "lightgbm"
        weight_from_cv = isinstance(self.trend_weight, str)
        a = b = None
        if stop_early or weight_from_cv:
            n_cells = self._fewest_valid_cells(features_coarse, z_coarse)
            if n_cells >= MIN_CELLS_SELECTION:
                a, b = self._named_trend_cv(coarse, features_coarse, z_coarse, steps, stop_early)
            elif weight_from_cv:
                warnings.warn(
                    f"{n_cells} valid coarse cells are too few to cross-validate the weight of the trend "
                    f"(trend_weight='cv' needs {MIN_CELLS_SELECTION}); it is used as fitted (weight 1).",
                    stacklevel=4,
                )
            else:
                logger.info(
                    "%d valid coarse cells are too few to choose the boosting rounds (%d needed): "
                    "LightGBMTrend's n_estimators is kept.",
                    n_cells,
                    MIN_CELLS_SELECTION,
                )
        if isinstance(self.trend_spec_, str) and self.trend_spec_ == "none":  # no round helps: the mean
            weight = 1.0
        elif weight_from_cv and a is not None:
            import pandas as pd

            weight, cv_rmse, cv_unshrunk = _blend(a, b)
            cv_none = float(np.sqrt(np.mean(a**2)))
            self.cv_results_ = pd.DataFrame(
                [
                    ["none", 0, 1.0, cv_none, cv_none, False],
                    [self.selected_trend_, len(self.features_used_), weight, cv_rmse, cv_unshrunk, True],
                ],
                columns=["trend", "n_features", "weight", "cv_rmse", "cv_rmse_unshrunk", "selected"],
            )
        elif isinstance(self.trend_weight, (int, float)):
            weight = float(self.trend_weight)
        else:
            weight = 1.0
        self.trend_weight_ = weight
        if weight < 1.0:
            self.trend_spec_ = ShrunkTrend(self.trend_spec_, weight=weight)

    def _named_trend_cv(self, coarse, features_coarse, z_coarse, steps, stop_early):
        """Spatial CV of the named trend on the coarse cells: ``a`` and ``b`` of :meth:`_selection_cv`.

        With ``stop_early`` (LightGBM), one fit per fold gives the out-of-fold error of every round
        count of ``boosting_rounds`` and of zero rounds (the mean); the least sets ``n_rounds_`` (and
        ``trend_spec_``: ``"none"`` for zero rounds), ``rounds_cv_`` holds the curve, and ``b`` is that
        of the chosen count.
        """
        import pandas as pd

        label = self.selected_trend_
        if not stop_early:
            a, b = self._selection_cv(
                coarse, features_coarse, z_coarse, steps, {label: (self.trend, self.features_used_)}
            )
            return a, b[label]
        model = make_trend("lightgbm", random_state=self.random_state, n_jobs=self.n_jobs)
        rounds = boosting_rounds(model.n_estimators)
        a, b = self._selection_cv(
            coarse, features_coarse, z_coarse, steps, {label: (model, self.features_used_)}, rounds=rounds
        )
        # Zero rounds is LightGBM's starting point, the mean (the constant trend, b = 0).
        rounds = np.concatenate([[0], rounds])
        b = np.concatenate([np.zeros((1, a.size)), b[label]])
        cv_rmse = np.sqrt(np.mean((a - b) ** 2, axis=1))
        best = int(np.argmin(cv_rmse))
        self.n_rounds_ = int(rounds[best])
        self.rounds_cv_ = pd.DataFrame(
            {"n_rounds": rounds, "cv_rmse": cv_rmse, "selected": np.arange(len(rounds)) == best}
        )
        self.trend_spec_ = "none" if self.n_rounds_ == 0 else model.set_params(n_estimators=self.n_rounds_)
        if self.n_rounds_ == 0:
            warnings.warn(
                "trend='lightgbm': on held-out spatial blocks of coarse cells no boosting round predicts "
                "better than the constant mean, so the trend is the mean and the result is area-to-point "
                "kriging of the field (rounds_cv_ has the curve). The covariates do not explain the coarse "
                "field; set early_stopping=False to keep the trees anyway.",
                stacklevel=4,
            )
        logger.info(
            "trend='lightgbm': %d boosting rounds from spatial CV:\n%s", self.n_rounds_, self.rounds_cv_
        )
        return a, b[best]

    def _fewest_valid_cells(self, features_coarse, z_coarse):
        """Fewest coarse cells with a value and every covariate, over the time steps."""
        return min(
            int((np.isfinite(z_coarse[t]) & np.isfinite(self._at(features_coarse, t)).all(axis=0)).sum())
            for t in range(z_coarse.shape[0])
        )

    @staticmethod
    def _check_coarse(coarse):
        if not isinstance(coarse, xr.DataArray):
            raise TypeError(
                f"coarse must be an xarray DataArray with dims ('y', 'x') or ('time', 'y', 'x'), got "
                f"{type(coarse).__name__}."
            )
        grid_module.check_grid(coarse, name="coarse")
        if coarse.ndim == 3 and coarse.dims[0] != "time" or coarse.ndim not in (2, 3):
            raise ValueError(
                f"coarse must have dims ('y', 'x') or ('time', 'y', 'x'), got {coarse.dims}. "
                f"Rename the leading dimension to 'time' or select one slice."
            )
        return coarse.astype(np.float64)

    @staticmethod
    def _check_X(X):
        if isinstance(X, xr.DataArray):
            X = X.to_dataset(name=X.name or "covariate")
        if not isinstance(X, xr.Dataset):
            raise TypeError(
                f"X must be an xarray Dataset of fine covariates (e.g. from downscale.covariates.build), "
                f"got {type(X).__name__}."
            )
        grid_module.check_grid(X, name="X")
        variables = [name for name, da in X.data_vars.items() if {"y", "x"} <= set(da.dims)]
        if not variables:
            raise ValueError(
                "X has no covariate with dims ('y', 'x'); build it with downscale.covariates.build."
            )
        for name in variables:
            extra = set(X[name].dims) - {"time", "y", "x"}
            if extra:
                raise ValueError(
                    f"Covariate {name!r} has dims {X[name].dims}; only 'time', 'y' and 'x' are allowed. "
                    f"Select or average the extra dimension {sorted(extra)}."
                )
        return X, variables

    def _nesting(self, coarse, X):
        try:
            return grid_module.nesting_factor(coarse, X)
        except ValueError as error:
            raise ValueError(
                f"The coarse field's grid does not match the fine covariates X: {error} "
                f"Bring the coarse field onto a grid in which X nests with `downscale.align`."
            ) from None

    def _resolve_bounds(self, coarse):
        if self.bounds is not None:
            low, high = self.bounds
        else:
            low, high = coarse.attrs.get("valid_min"), coarse.attrs.get("valid_max")
        low = None if low is None else float(low)
        high = None if high is None else float(high)
        if low is not None and high is not None and not high > low:
            raise ValueError(f"bounds must satisfy low < high, got ({low}, {high}).")
        return low, high

    def _fine_mask(self, mask, coarse, X, factor):
        if mask is None:
            return None
        if isinstance(mask, str):
            if mask != "coarse":
                raise ValueError(f"mask must be a boolean fine grid, 'coarse' or None, got {mask!r}.")
            valid = coarse.notnull()
            if "time" in valid.dims:
                valid = valid.any("time")
            return np.repeat(np.repeat(valid.values, factor, axis=0), factor, axis=1)
        if (
            not isinstance(mask, xr.DataArray)
            or mask.dims != ("y", "x")
            or mask.shape
            != (
                X.sizes["y"],
                X.sizes["x"],
            )
        ):
            raise ValueError(
                f"mask must be a boolean DataArray with dims ('y', 'x') on the fine grid of X "
                f"({X.sizes['y']} x {X.sizes['x']}), got {getattr(mask, 'dims', type(mask).__name__)} "
                f"{getattr(mask, 'shape', '')}."
            )
        return np.asarray(mask.values, dtype=bool)

    # ------------------------------------------------------------ features

    def _feature_stack(self, X, nt, names=None):
        """Fine features as an array ``(nt or 1, len(names), ny, nx)``, ``names`` by default ``feature_names_``.

        Every covariate of ``feature_names_`` must be static or have ``nt`` time steps, stacked or not.
        """
        for name in self.feature_names_:
            steps = X[name].sizes.get("time")
            if steps is not None and steps != nt:
                raise ValueError(
                    f"Covariate {name!r} has {steps} time steps but the coarse field has {nt}. "
                    f"Match the times first (downscale.align) or give a static covariate."
                )
        arrays = []
        for name in self.feature_names_ if names is None else names:
            values = X[name].transpose(..., "y", "x").values  # float32 terrain features stay so until stacked
            arrays.append(values if values.ndim == 3 else values[None])
        stack = np.empty((max(a.shape[0] for a in arrays), len(arrays), *arrays[0].shape[1:]), np.float64)
        for k, values in enumerate(arrays):
            stack[:, k] = values  # one pass: cast to float64 and broadcast over time
        return stack

    def _trend_features(self, X, nt, fine_mask):
        """The covariates the trend uses, ``(nt or 1, n_used, ny, nx)``, NaN outside ``fine_mask``."""
        names = [self.feature_names_[i] for i in self._used_index()]
        features = self._feature_stack(X, nt, names)
        return features if fine_mask is None else np.where(fine_mask, features, np.nan)

    def _trend_fingerprint(self, X, nt, fine_mask):
        """The identity of :meth:`_trend_features`: shapes and a hash of every value and of the mask.

        Read straight from ``X`` (no stacking): :meth:`predict` reuses the trend of ``fit`` only when
        the covariates it uses and the mask are the very same, bit for bit.
        """
        parts = [nt, X.sizes["y"], X.sizes["x"]]
        for index in self._used_index():
            values = np.ascontiguousarray(X[self.feature_names_[index]].transpose(..., "y", "x").values)
            parts.append((values.shape, values.dtype.str, _hash_values(values)))
        parts.append(None if fine_mask is None else _hash_values(np.ascontiguousarray(fine_mask, dtype=bool)))
        return tuple(parts)

    def _used_index(self):
        """Positions in ``feature_names_`` of the covariates the trend uses."""
        used = getattr(self, "features_used_", None)
        if used is None:  # fitted outside fit (e.g. the tiled runner): every covariate
            return np.arange(len(self.feature_names_))
        return np.array([self.feature_names_.index(name) for name in used], dtype=np.int64)

    @staticmethod
    def _retention(features, features_coarse):
        """:func:`~downscale.models.trend.retention` of every covariate (fine vs block-mean spread), pooled over time."""
        k = features.shape[1]
        fine = np.moveaxis(features, 1, 0).reshape(k, -1)
        block = np.moveaxis(features_coarse, 1, 0).reshape(k, -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN covariates: retention 0
            return retention(_nanstd_rows(fine), np.nanstd(block, axis=1))

    @staticmethod
    def _at(stack, t):
        return stack[min(t, stack.shape[0] - 1)]

    # ------------------------------------------------------------------ fit

    def fit(self, coarse, X, mask=None, stations=None, station_noise=None):
        """Fit the trend on the valid coarse cells and the residual kriging on the coarse residuals.

        Parameters
        ----------
        coarse : xarray.DataArray
            Coarse field ``(y, x)`` or ``(time, y, x)``; NaN cells are left out.
        X : xarray.Dataset
            Fine covariates on a grid that nests in ``coarse`` (static ``(y, x)`` or ``(time, y, x)``).
        mask : xarray.DataArray of bool or "coarse", optional
            Fine pixels where the field is defined (e.g. land for a land-only variable). Kept for
            :meth:`predict`.
        stations : geopandas.GeoDataFrame, optional
            In-situ values (a ``value`` column, optionally ``time``; see
            :func:`downscale.validation.station_scores`). They join the trend's fit when that predicts
            held-out stations better (``station_trend``; module notes). With ``calibrate_std``, the
            standard deviation is then calibrated at these stations (split conformal, as
            :func:`downscale.validation.calibrate_std` does, on held-out errors when they are in the
            trend) instead of by the Wald protocol: only stations see the error below the coarse
            scale. Keep other stations to check the result.
        station_noise : float or str, optional
            Standard deviation of a station value's own error (instrument, point versus pixel), in
            the field's units: a number or a column of ``stations`` (the synthetic scenes' stations
            have ``noise_std``). The calibration then leaves it out of the pixel's std (see
            :func:`downscale.validation.calibrate_std`).

        Returns
        -------
        self
        """
        self._check_parameters()
        if station_noise is not None and stations is None:
            raise ValueError("station_noise was given without stations: pass the stations it describes.")
        coarse = self._check_coarse(coarse)
        X, variables = self._check_X(X)
        factor = self._nesting(coarse, X)
        bounds = self._resolve_bounds(coarse)
        transform = make_transform(self.transform, bounds)
        nt = coarse.sizes["time"] if "time" in coarse.dims else 1
        self.feature_names_ = variables
        self.feature_names_in_ = np.asarray(variables, dtype=object)
        self.n_features_in_ = len(variables)
        self.factor_ = factor
        self.bounds_ = bounds
        self.transform_ = transform
        self.mask_ = self._fine_mask(mask, coarse, X, factor)
        self.fine_shape_ = (X.sizes["y"], X.sizes["x"])

        values = np.asarray(coarse.values, dtype=np.float64).reshape(nt, *coarse.shape[-2:])
        values = self._clip_to_bounds(values, bounds)
        self.coarse_ = coarse.copy(data=values.reshape(coarse.shape))
        features = self._feature_stack(X, nt)
        if self.mask_ is not None:
            features = np.where(self.mask_, features, np.nan)
        self._check_covariate_gaps(features, values, factor)

        features_coarse = self._block_means(features, X, factor)  # (nt or 1, n_features, cy, cx)
        z_coarse = transform.forward(values)
        n_valid = [
            int((np.isfinite(z_coarse[t]) & np.isfinite(self._at(features_coarse, t)).all(axis=0)).sum())
            for t in range(nt)
        ]
        needed = MIN_CELLS_KRIGING if self.residual == "atpk" else MIN_CELLS_TREND
        if min(n_valid) < needed:
            worst = int(np.argmin(n_valid))
            raise ValueError(
                f"The coarse field has {n_valid[worst]} valid cell(s)"
                + (f" at time step {worst}" if nt > 1 else "")
                + f"; the Downscaler needs at least {needed} "
                + ("for residual kriging" if self.residual == "atpk" else "to fit a trend")
                + ". Use a larger area, fill the gaps, or drop that time step."
            )

        steps = [list(range(nt))] if self.temporal == "pooled" else [[t] for t in range(nt)]
        self.retention_ = self._retention(features, features_coarse)
        self._choose_trend(coarse, features_coarse, z_coarse, steps, transform)
        self._fit_trend_and_kriging(features, features_coarse, z_coarse, coarse, X, steps)
        self.station_trend_ = False
        self.station_cv_ = None
        self.station_values_ = 0
        self.station_rows_ = None
        self.std_scale_ = 1.0
        self.wald_scale_ = None
        self.std_calibration_ = "none"
        self.std_scale_stations_ = 0
        if stations is not None and not self.calibrate_std and self.station_trend is False:
            warnings.warn(
                "stations calibrate the standard deviation or join the trend, and calibrate_std=False with "
                "station_trend=False: they are ignored. Set calibrate_std=True to calibrate at them, or "
                "station_trend='auto' to let them join the trend.",
                stacklevel=2,
            )
        held_out = None
        if stations is not None and (self.calibrate_std or self.station_trend is not False):
            held_out = self._trend_with_stations(
                features, features_coarse, z_coarse, coarse, X, steps, stations, station_noise
            )
        if self.calibrate_std and stations is not None:
            if self.station_trend_:
                # The stations shaped the trend: each is calibrated by the fit that left it out.
                observed, predicted, spread, noise = held_out
                self.std_scale_, self.std_scale_stations_ = conformal_scale(
                    observed, predicted, spread, CALIBRATION_COVERAGE, noise=noise
                )
            else:
                self.std_scale_ = self._station_scale(X, stations, station_noise, prediction=held_out)
            self.std_calibration_ = "stations"
        elif self.calibrate_std:
            self.std_scale_ = self._wald_scale(coarse, features_coarse[:, self._used_index()], X)
            self.std_calibration_ = "wald"
        return self

    def _fit_trend_and_kriging(self, features, features_coarse, z_coarse, coarse, X, steps, stations=None):
        """Fit the trend(s) on the coarse cells (plus ``stations``, rows from :meth:`_station_records`)
        and the kriging of the coarse residuals. ``features`` holds every covariate."""
        nt = z_coarse.shape[0]
        used = self._used_index()
        if used.size < features.shape[1]:  # else every covariate, in order: no copy
            features = features[:, used]
            features_coarse = features_coarse[:, used]

        # Trend(s) on the coarse cells (and the station values given).
        self.trend_models_ = []
        for group in steps:
            rows, target = self._coarse_rows(features_coarse, z_coarse, group)
            if stations is not None:
                at = np.isin(stations["t"], group)
                rows = np.concatenate([rows, stations["features"][at][:, used]])
                target = np.concatenate([target, stations["z"][at]])
            model = make_trend(self.trend_spec_, random_state=self.random_state, n_jobs=self.n_jobs)
            self.trend_models_.append(model.fit(rows, target))

        trend_fine = self._trend_fine(features, nt)  # (nt, ny, nx), NaN where a covariate is NaN
        # predict(X) on the very covariates of fit reuses this trend (the fine trend is the costly part).
        self._trend_cache = (self._trend_fingerprint(X, nt, self.mask_), trend_fine)
        template = self._fine_template(X, coarse)
        trend_block = grid_module.block_mean(
            template.copy(data=trend_fine.reshape(template.shape)), self.factor_, min_valid=1e-9
        )
        residual = z_coarse.reshape(coarse.shape) - trend_block.values
        residual = np.where(np.isfinite(z_coarse.reshape(coarse.shape)), residual, np.nan)
        self.trend_within_share_ = within_cell_share(
            np.sum([within_cell_sums(step, self.factor_) for step in trend_fine], axis=0)
        )
        self.residual_coarse_ = coarse.copy(data=residual)
        self.residual_coarse_.attrs = {
            "long_name": f"coarse residual of the trend ({self.transform_.name} space)"
        }

        self.atpk_ = []
        if self.residual == "atpk":
            self.atpk_ = self._fit_kriging(self.residual_coarse_, nt)
        self._trend_variance_value = None
        if getattr(self, "_selection_helper", False):  # the selection's one-level-up fits need no std
            self._trend_variance_value = np.zeros(nt)
        self._trend_variance_inputs = (features_coarse, z_coarse, residual.reshape(nt, -1), steps)

    # ------------------------------------------------------------ stations in the trend

    def _station_records(self, stations, features, X, coarse, noise):
        """The station records as trend rows: time step, fine pixel, every covariate there, transformed value.

        Records outside the grid, without a matching time step, or on a pixel without covariates are
        left out (the calibration warns about them).
        """
        from .validation.stations import (
            _check_value_column,
            _grid_positions,
            _location_ids,
            _nearest_cells,
            _time_indices,
            station_noise_values,
        )

        _check_value_column(stations, "value", fix="Rename the observation column to 'value'.")
        template = self._fine_template(X, coarse)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the calibration reports stations outside the grid or time
            located, row, col, inside = _grid_positions(stations, template)
            time_index = _time_indices(template, located, None)
        if time_index is None:
            time_index = np.zeros(len(located), dtype=np.int64)
        i, j = _nearest_cells(row, col, self.fine_shape_)
        t = np.where(time_index >= 0, time_index, 0)
        covariates = features[np.minimum(t, features.shape[0] - 1), :, i, j]  # (records, covariates)
        observed = located["value"].to_numpy(dtype=np.float64)
        z = self.transform_.forward(_within(observed, self.bounds_))
        ok = inside & (time_index >= 0) & np.isfinite(z) & np.isfinite(covariates).all(axis=1)
        return {
            "t": t[ok],
            "i": i[ok],
            "j": j[ok],
            "features": covariates[ok],
            "z": z[ok],
            "observed": observed[ok],
            "noise": station_noise_values(located, noise)[ok],
            "location": _location_ids(located)[ok],
        }

    def _use_station_trend(self):
        """Set the trend that the stations join: the named (or chosen) trend, unshrunk, on its covariates
        down to ``min_retention`` (0 by default: stations see the fine-scale effects block means hide)."""
        if isinstance(self.trend, str) and self.trend == "auto":
            self.trend_spec_ = self.selected_trend_
        else:
            self.trend_spec_ = self.trend
        self.trend_weight_ = 1.0
        self.n_rounds_ = None
        threshold = 0.0 if self.min_retention is None else float(self.min_retention)
        self.features_used_ = [
            n for n, r in zip(self.feature_names_, self.retention_, strict=True) if r >= threshold
        ] or list(self.feature_names_)

    def _trend_with_stations(self, features, features_coarse, z_coarse, coarse, X, steps, stations, noise):
        """Refit the trend on the coarse cells plus the station values when that predicts held-out stations better.

        Returns what the std calibration needs: with the stations in the trend, the out-of-fold
        ``(observed, predicted, std, noise)`` at the station records; else the prediction (and std)
        of the fit without them, ``(fine, std)``, or None.
        """
        import copy

        import pandas as pd

        want_std = self.calibrate_std
        plain = self.predict(X, return_std=True) if want_std else None
        if self.station_trend is False:
            return plain
        # The stations join the named (or chosen) trend, whatever rounds or weight the coarse cells gave it.
        if self.selected_trend_ == "none":
            if self.station_trend is True:
                warnings.warn(
                    "station_trend=True, but the trend is the constant ('none'"
                    + (
                        ", chosen by trend='auto'"
                        if isinstance(self.trend, str) and self.trend == "auto"
                        else ""
                    )
                    + "): it has no covariates for the stations to inform. Name a trend, e.g. "
                    "trend='linear', to fit it on the stations.",
                    stacklevel=3,
                )
            return plain
        records = self._station_records(stations, features, X, coarse, noise)
        n = records["z"].size
        if n < MIN_STATION_RECORDS:
            message = (
                f"{n} usable station value(s) (inside the grid, at a time step, on a pixel with covariates); "
                f"the trend needs at least {MIN_STATION_RECORDS} to be fitted on them too, so it is fitted on "
                f"the coarse cells alone."
            )
            if self.station_trend is True:
                warnings.warn(message, stacklevel=3)
            logger.info(message)
            return plain
        nt = z_coarse.shape[0]
        t, i, j = records["t"], records["i"], records["j"]
        observed = records["observed"]

        def at_records(field, which=slice(None)):
            """Values of a fine field ``(nt, ny, nx)`` at the station records ``which``."""
            values = np.asarray(field.values, dtype=np.float64).reshape(nt, *self.fine_shape_)
            return values[t[which], i[which], j[which]]

        fused = copy.copy(self)
        fused._use_station_trend()
        # Folds of station locations (a station's records over time stay together).
        locations, location_of = np.unique(records["location"], return_inverse=True)
        rng = np.random.default_rng(self.random_state)
        fold = (rng.permutation(locations.size) % STATION_FOLDS)[location_of]
        predicted = np.full(n, np.nan)
        spread = np.full(n, np.nan)
        trend_variance = None
        # Forced in without a std to calibrate, nothing needs the held-out predictions.
        folds = range(STATION_FOLDS) if (want_std or self.station_trend == "auto") else []
        for k in folds:
            test = fold == k
            if not test.any():
                continue
            train = {key: value[~test] for key, value in records.items()}
            model = copy.copy(fused)
            model._fit_trend_and_kriging(
                features, features_coarse, z_coarse, coarse, X, steps, stations=train
            )
            model.std_scale_ = 1.0
            if trend_variance is not None:
                model.trend_variance_ = trend_variance
            out = model.predict(X, return_std=want_std)
            predicted[test] = at_records(out[0] if want_std else out, test)
            if want_std:
                trend_variance = model.trend_variance_
                spread[test] = at_records(out[1], test)
        without = at_records(plain[0] if plain is not None else self.predict(X))
        both = np.isfinite(predicted) & np.isfinite(without)
        rmse_without, rmse_with = (
            float(np.sqrt(np.mean((values[both] - observed[both]) ** 2))) if both.any() else np.nan
            for values in (without, predicted)
        )
        gain = _gain_in_standard_errors(
            (without[both] - observed[both]) ** 2 - (predicted[both] - observed[both]) ** 2,
            records["location"][both],
        )
        use = self.station_trend is True or gain > STATION_GAIN_STANDARD_ERRORS
        self.station_cv_ = pd.DataFrame(
            {
                "trend_fitted_on": ["coarse cells", "coarse cells + stations"],
                "trend": [self.selected_trend_] * 2,
                "n_features": [len(self.features_used_), len(fused.features_used_)],
                "station_rmse": [rmse_without, rmse_with],
                "n_values": [int(both.sum())] * 2,
                "gain_in_standard_errors": [np.nan, gain],
                "selected": [not use, use],
            }
        )
        logger.info("Trend with and without the stations (held-out station RMSE):\n%s", self.station_cv_)
        if not use:
            return plain
        self._use_station_trend()
        self.station_trend_ = True
        self.station_values_ = n
        # The station rows of the trend, for what looks at its training data (area of applicability).
        self.station_rows_ = pd.DataFrame(records["features"], columns=self.feature_names_).assign(
            time_index=t,
            x=np.asarray(X["x"].values, dtype=np.float64)[j],
            y=np.asarray(X["y"].values, dtype=np.float64)[i],
        )
        self._fit_trend_and_kriging(features, features_coarse, z_coarse, coarse, X, steps, stations=records)
        return observed, predicted, spread, records["noise"]

    # ------------------------------------------------------------ trend="auto"

    def _select_trend(self, coarse, features_coarse, z_coarse, steps, transform):
        """Choose the trend of ``trend="auto"`` (see the class notes); sets ``trend_spec_`` and the reports."""
        import pandas as pd

        names = self.feature_names_
        used = {name: self._retained(names, name) for name in AUTO_CANDIDATES}
        n_cells = self._fewest_valid_cells(features_coarse, z_coarse)
        columns = ["trend", "n_features", "weight", "cv_rmse", "cv_rmse_unshrunk", "wald_rmse", "score"]
        if n_cells < MIN_CELLS_SELECTION:
            logger.info(
                "%d valid coarse cells (< %d): trend='auto' keeps the constant trend.",
                n_cells,
                MIN_CELLS_SELECTION,
            )
            table = pd.DataFrame(
                [
                    [name, len(used[name]), 0.0 if name != "none" else 1.0, np.nan, np.nan, np.nan, np.nan]
                    for name in AUTO_CANDIDATES
                ],
                columns=columns,
            )
            self._set_selection("none", 1.0, used["none"], table)
            return

        candidates = {name: (name, used[name]) for name in AUTO_CANDIDATES if name != "none"}
        a, b = self._selection_cv(coarse, features_coarse, z_coarse, steps, candidates)
        cv_none = float(np.sqrt(np.mean(a**2)))
        weights, cv_rmse, cv_full = {"none": 1.0}, {"none": cv_none}, {"none": cv_none}
        for name, b_name in b.items():
            weights[name], cv_rmse[name], cv_full[name] = _blend(a, b_name)
        cv_ratio = {name: value / cv_none if cv_none > 0 else 1.0 for name, value in cv_rmse.items()}
        wald = self._selection_wald(coarse, features_coarse, used, weights, cv_ratio, transform)

        scores = {}
        for name in AUTO_CANDIDATES:
            ratios = [cv_ratio[name]]
            if np.isfinite(wald[name]) and np.isfinite(wald["none"]) and wald["none"] > 0:
                ratios.append(wald[name] / wald["none"])
            scores[name] = max(ratios)
        best = min(scores.values())
        chosen = next(name for name in AUTO_CANDIDATES if scores[name] <= best * (1 + SELECTION_TOLERANCE))
        if weights[chosen] == 0.0:
            chosen = "none"
        table = pd.DataFrame(
            [
                [name, len(used[name]), weights[name], cv_rmse[name], cv_full[name], wald[name], scores[name]]
                for name in AUTO_CANDIDATES
            ],
            columns=columns,
        )
        self._set_selection(chosen, weights[chosen], used[chosen], table)

    def _set_selection(self, chosen, weight, used, table):
        table["selected"] = table["trend"] == chosen
        self.cv_results_ = table
        self.selected_trend_ = chosen
        self.trend_weight_ = float(weight) if chosen != "none" else 1.0
        self.trend_spec_ = (
            chosen if self.trend_weight_ == 1.0 else ShrunkTrend(chosen, weight=self.trend_weight_)
        )
        self.features_used_ = list(used)
        self.n_rounds_ = None
        self.rounds_cv_ = None
        logger.info("trend='auto' chose %s (weight %.2f):\n%s", chosen, self.trend_weight_, table.to_string())

    def _selection_folds(self, coarse, valid_cells):
        """Fold of every coarse cell (-1 where it never has data): spatial blocks of a few coarse cells."""
        from .kriging.variogram import grid_cell_size
        from .validation.crossval import coarse_cell_coordinates
        from .validation.splitters import SpatialBlockKFold

        grid = coarse.isel(time=0, drop=True) if "time" in coarse.dims else coarse
        coords = coarse_cell_coordinates(grid)
        cell = max(grid_cell_size(grid))
        fold = np.full(valid_cells.size, -1, dtype=np.int64)
        for side in (SELECTION_BLOCK_CELLS, 1):
            splitter = SpatialBlockKFold(
                n_splits=self.cv_splits, block_size=side * cell * (1 + 1e-9), random_state=self.random_state
            )
            try:
                fold[valid_cells] = splitter.fold_labels(coords[valid_cells])
                return fold, coords
            except ValueError:
                continue
        raise ValueError(
            f"The coarse field has {int(valid_cells.sum())} valid cells, too few for {self.cv_splits} spatial "
            f"folds; lower cv_splits or give a trend explicitly."
        )

    def _selection_cv(self, coarse, features_coarse, z_coarse, steps, candidates, rounds=None):
        """Out-of-fold regression-kriging errors on the coarse cells.

        ``candidates`` maps a label to a trend spec and the covariates it uses. Returns ``a``, the
        errors of ordinary kriging of the field from the training cells (the constant trend), and
        for every candidate ``b``, the out-of-fold trend minus its kriged training values at the
        same cells: with ordinary kriging weights (summing to one), the error of the trend shrunk
        by ``w`` toward the mean is exactly ``a - w * b``. With ``rounds`` (boosting round counts),
        the candidates are :class:`~downscale.models.trend.LightGBMTrend` and ``b`` has one row per
        round count (from :meth:`~downscale.models.trend.LightGBMTrend.staged_predict`).
        """
        from .kriging.variogram import empirical_variogram, fit_variogram

        nt = z_coarse.shape[0]
        finite = np.isfinite(z_coarse) & np.stack(
            [np.isfinite(self._at(features_coarse, t)).all(axis=0) for t in range(nt)]
        )  # (nt, cy, cx)
        fold, coords = self._selection_folds(coarse, finite.any(axis=0).ravel())
        # Evenly spaced time steps (or groups) bound the cost on long series.
        if len(steps) > 1:
            steps = [
                steps[i]
                for i in np.unique(np.linspace(0, len(steps) - 1, MAX_SELECTION_STEPS).round().astype(int))
            ]
        else:
            group = steps[0]
            steps = [
                [
                    group[i]
                    for i in np.unique(
                        np.linspace(0, len(group) - 1, MAX_SELECTION_STEPS).round().astype(int)
                    )
                ]
            ]
        index = {
            label: [self.feature_names_.index(n) for n in names] for label, (_, names) in candidates.items()
        }
        a_parts, b_parts = [], {label: [] for label in candidates}
        grid = coarse.isel(time=0, drop=True) if "time" in coarse.dims else coarse
        for group in steps:
            plans = {}  # (t, k) -> (test cells, neighbour cells, kriging weights)
            for t in group:
                z = z_coarse[t]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    field = grid.copy(data=np.where(finite[t], z, np.nan))
                    variogram = fit_variogram(empirical_variogram(field), self.variogram, nugget="fit")
                ok = finite[t].ravel()
                for k in np.unique(fold[ok]):
                    test = np.flatnonzero(ok & (fold == k))
                    train = np.flatnonzero(ok & (fold != k))
                    if train.size < MIN_CELLS_TREND or test.size == 0:
                        continue
                    neighbours, weights = _kriging_weights(
                        coords, train, test, variogram, SELECTION_NEIGHBOURS
                    )
                    plans[t, k] = (test, neighbours, weights)
                    values = z.ravel()
                    a_parts.append(values[test] - (weights * values[neighbours]).sum(axis=1))
            folds = sorted({k for _, k in plans})
            for name in b_parts:
                columns = index[name]
                for k in folds:
                    rows, target = [], []
                    for t in group:
                        f = self._at(features_coarse, t)[columns].reshape(len(columns), -1).T
                        train = finite[t].ravel() & (fold != k)
                        rows.append(f[train])
                        target.append(z_coarse[t].ravel()[train])
                    spec = candidates[name][0]
                    model = make_trend(spec, random_state=self.random_state, n_jobs=self.n_jobs)
                    if isinstance(spec, str) and spec == "rf":  # a third of the trees: enough to rank
                        model.set_params(n_estimators=SELECTION_FOREST_TREES)
                    model.fit(np.concatenate(rows), np.concatenate(target))
                    for t in group:
                        if (t, k) not in plans:
                            continue
                        test, neighbours, weights = plans[t, k]
                        f = self._at(features_coarse, t)[columns].reshape(len(columns), -1).T
                        ok = finite[t].ravel()
                        trend = np.full((1 if rounds is None else len(rounds), f.shape[0]), np.nan)
                        if rounds is None:
                            trend[0, ok] = model.predict(f[ok])
                        else:
                            trend[:, ok] = model.staged_predict(f[ok], rounds)
                        b_parts[name].append(trend[:, test] - (weights * trend[:, neighbours]).sum(axis=-1))
        a = np.concatenate(a_parts)
        b = {name: np.concatenate(parts, axis=1) for name, parts in b_parts.items()}
        return a, b if rounds is not None else {name: rows[0] for name, rows in b.items()}

    def _selection_wald(self, coarse, features_coarse, used, weights, cv_ratio, transform):
        """RMSE (transformed space) of every candidate downscaling the 2 x 2 means of ``coarse`` back onto it."""
        wald = dict.fromkeys(AUTO_CANDIDATES, np.nan)
        cy, cx = coarse.shape[-2:]
        if cy // 2 < WALD_MIN_CELLS or cx // 2 < WALD_MIN_CELLS:
            return wald
        level, upper, X_level, level_mask = self._level_up(coarse, features_coarse, self.feature_names_)
        truth = transform.forward(np.asarray(level.values, dtype=np.float64))
        # The candidates as the cross-validation scored them: LightGBM with its 300 rounds.
        params = {
            **self.get_params(deep=False),
            "calibrate_std": False,
            "trend_weight": None,
            "early_stopping": False,
        }
        for name in AUTO_CANDIDATES:
            if name != "none" and not (weights[name] > 0 and cv_ratio[name] < 1):
                continue  # the constant trend wins this candidate's comparison already
            spec = name if weights[name] == 1.0 or name == "none" else ShrunkTrend(name, weight=weights[name])
            helper = Downscaler(**{**params, "trend": spec})
            helper._selection_helper = True
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    helper.fit(upper, X_level[used[name]], mask=level_mask)
                    prediction = helper.predict(X_level[used[name]])
            except ValueError as error:
                logger.info("Wald check of %s skipped: %s", name, error)
                continue
            error = transform.forward(np.asarray(prediction.values, dtype=np.float64)) - truth
            error = error[np.isfinite(error)]
            if error.size >= MIN_CELLS_KRIGING:
                wald[name] = float(np.sqrt(np.mean(error**2)))
        return wald

    @staticmethod
    def _clip_to_bounds(values, bounds):
        low, high = bounds
        finite = values[np.isfinite(values)]
        outside = 0
        if low is not None:
            outside += int((finite < low).sum())
        if high is not None:
            outside += int((finite > high).sum())
        if outside:
            warnings.warn(
                f"{outside} coarse value(s) lie outside the bounds {bounds}; they are clipped to the bounds "
                f"(coherence is with the clipped values).",
                stacklevel=3,
            )
            values = _within(values, bounds)
        return values

    def _check_covariate_gaps(self, features, values, factor):
        valid_coarse = np.isfinite(values)  # (nt, cy, cx)
        valid_fine = np.repeat(np.repeat(valid_coarse, factor, axis=1), factor, axis=2)
        if self.mask_ is not None:
            valid_fine &= self.mask_
        for t in range(valid_fine.shape[0]):
            gaps = ~np.isfinite(self._at(features, t)) & valid_fine[t]
            if gaps.any():
                counts = gaps.reshape(gaps.shape[0], -1).sum(axis=1)
                names = [f"{n} ({c} pixels)" for n, c in zip(self.feature_names_, counts, strict=True) if c]
                raise ValueError(
                    f"Covariates have NaN where the coarse target is valid: {', '.join(names)}"
                    + (f" at time step {t}" if valid_fine.shape[0] > 1 else "")
                    + ". Fill the gaps (e.g. downscale.covariates.fill_gaps), or pass mask= to exclude "
                    "those pixels."
                )

    @staticmethod
    def _block_means(features, X, factor):
        """Block means ``(lead, k, cy, cx)`` of a feature stack on the grid of ``X``, weighted as in :func:`~downscale.grid.block_mean`."""
        row_weights = grid_module.block_sum_weights(X, factor)
        return grid_module._block_mean_array(features, row_weights, factor, min_valid=1e-9)[0]

    def _coarse_rows(self, features_coarse, z_coarse, times):
        rows, target = [], []
        for t in times:
            f = self._at(features_coarse, t).reshape(features_coarse.shape[1], -1).T
            z = z_coarse[t].ravel()
            ok = np.isfinite(z) & np.isfinite(f).all(axis=1)
            rows.append(f[ok])
            target.append(z[ok])
        return np.concatenate(rows), np.concatenate(target)

    def _model_at(self, t):
        return self.trend_models_[0] if self.temporal == "pooled" else self.trend_models_[t]

    def _trend_fine(self, features, nt):
        """The trend on the fine pixels ``(nt, ny, nx)``, NaN where a covariate is NaN."""
        out = np.full((nt, *features.shape[-2:]), np.nan)
        for t in range(nt):
            f = self._at(features, t)
            table = f.reshape(f.shape[0], -1).T  # a view: one row per pixel
            ok = np.isfinite(table).all(axis=1)
            flat = out[t].reshape(-1)
            if ok.all():  # no copy of the table
                flat[:] = self._model_at(t).predict(table)
            elif ok.any():
                flat[ok] = self._model_at(t).predict(table[ok])
        return out

    @staticmethod
    def _fine_template(X, coarse):
        dims = coarse.dims
        coords = {"y": X["y"].values, "x": X["x"].values}
        shape = (X.sizes["y"], X.sizes["x"])
        if "time" in dims:
            coords["time"] = coarse["time"].values
            shape = (coarse.sizes["time"], *shape)
        template = xr.DataArray(np.zeros(shape), dims=dims, coords=coords)
        if "time" not in dims and "time" in coarse.coords and coarse["time"].size == 1:
            # One step of a series (coarse.isel(time=k)): the output keeps its date, and stations match it.
            template = template.assign_coords(time=np.asarray(coarse["time"].values))
        crs = grid_module.get_crs(X) or grid_module.get_crs(coarse)
        return grid_module.set_crs(template, crs) if crs is not None else template

    def _fit_kriging(self, residual_coarse, nt):
        from .kriging import ATPK

        # The selection's one-level-up fits compare trends under one kriging: the areal variogram is
        # used as it is there (the deconvolution costs more than the rest of such a fit).
        deconvolve = not getattr(self, "_selection_helper", False)

        def make():
            return ATPK(
                variogram=self.variogram,
                neighbours=self.neighbours,
                kind="ordinary",
                psf="box",
                deconvolve=deconvolve,
            )

        with warnings.catch_warnings():
            # A residual with little structure fits a flat variogram; the kriging then falls back to
            # the local mean, which is the right answer, so the fit warning is noise here.
            warnings.filterwarnings("ignore", message=".*[Vv]ariogram.*")
            if self.temporal == "pooled" or nt == 1:
                return [make().fit(residual_coarse)]
            return [make().fit(residual_coarse.isel(time=t)) for t in range(nt)]

    @property
    def trend_variance_(self):
        """Per-time variance of the trend error left after kriging, computed on first use (see the class notes)."""
        if getattr(self, "_trend_variance_value", None) is None:
            inputs = getattr(self, "_trend_variance_inputs", None)
            if inputs is None:
                raise AttributeError("trend_variance_ is set by fit: fit the Downscaler first.")
            self._trend_variance_value = self._trend_variance(*inputs)
            self._trend_variance_inputs = None
        return self._trend_variance_value

    @trend_variance_.setter
    def trend_variance_(self, value):
        self._trend_variance_value = np.asarray(value, dtype=np.float64)
        self._trend_variance_inputs = None

    def _trend_variance(self, features_coarse, z_coarse, residual, steps):
        """Per-time variance of the trend error left after kriging (out-of-fold minus in-sample)."""
        nt = z_coarse.shape[0]
        result = np.zeros(nt)
        spec = getattr(self, "trend_spec_", self.trend)
        if isinstance(spec, str) and spec == "none":
            return result
        cy, cx = z_coarse.shape[-2:]
        # Spatial blocks of about a fifth of the domain side, so that folds are not neighbours' copies.
        block = max(1, int(round(max(cy, cx) / 5)))
        block_id = (np.arange(cy)[:, None] // block) * (cx // block + 1) + (np.arange(cx)[None, :] // block)
        rng = np.random.default_rng(self.random_state)
        ids = np.unique(block_id)
        fold_of_block = dict(
            zip(rng.permutation(ids), np.arange(ids.size) % max(2, self.cv_splits), strict=True)
        )
        fold = np.vectorize(fold_of_block.get)(block_id).ravel()
        for group in steps:
            stacked_f = np.concatenate(
                [self._at(features_coarse, t).reshape(features_coarse.shape[1], -1).T for t in group]
            )
            stacked_z = np.concatenate([z_coarse[t].ravel() for t in group])
            stacked_fold = np.tile(fold, len(group))
            ok = np.isfinite(stacked_z) & np.isfinite(stacked_f).all(axis=1)
            errors = np.full(stacked_z.shape, np.nan)
            for k in np.unique(stacked_fold[ok]):
                train = ok & (stacked_fold != k)
                test = ok & (stacked_fold == k)
                if train.sum() < MIN_CELLS_TREND or not test.any():
                    continue
                model = make_trend(spec, random_state=self.random_state, n_jobs=self.n_jobs)
                model.fit(stacked_f[train], stacked_z[train])
                errors[test] = stacked_z[test] - model.predict(stacked_f[test])
            out_of_fold = np.nanvar(errors) if np.isfinite(errors).any() else 0.0
            in_sample = np.nanvar(np.concatenate([residual[t] for t in group]))
            for t in group:
                result[t] = max(out_of_fold - in_sample, 0.0)
        return result

    def _level_up(self, coarse, features_coarse, names):
        """The Wald protocol one level up: the coarse grid as the fine one, its 2 x 2 means as the coarse one.

        Returns ``(level, upper, X_level, level_mask)``: the coarse field (cropped to even sides), its
        2 x 2 block means, the block-mean covariates ``names`` as a Dataset on the coarse grid, and the
        coarse cells with data.
        """
        cy, cx = coarse.shape[-2:]
        ny, nx = cy // 2 * 2, cx // 2 * 2
        level = self.coarse_.isel(y=slice(0, ny), x=slice(0, nx))
        grid = level.isel(time=0, drop=True) if "time" in level.dims else level
        covariates = {}
        for k, name in enumerate(names):
            values = features_coarse[:, k, :ny, :nx]
            if values.shape[0] == 1:
                covariates[name] = (("y", "x"), values[0])
            else:
                covariates[name] = (("time", "y", "x"), values)
        coords = {"y": grid["y"].values, "x": grid["x"].values}
        if "time" in level.dims:
            coords["time"] = level["time"].values
        X_level = xr.Dataset(covariates, coords=coords)
        crs = grid_module.get_crs(coarse)
        if crs is not None:
            X_level = grid_module.set_crs(X_level, crs)
            level = grid_module.set_crs(level.drop_vars("spatial_ref", errors="ignore"), crs)
        upper = grid_module.block_mean(level, 2, min_valid=1e-9)
        valid = np.isfinite(level.values)
        level_mask = xr.DataArray(
            valid.any(axis=0) if valid.ndim == 3 else valid,
            dims=("y", "x"),
            coords={"y": coords["y"], "x": coords["x"]},
        )
        return level, upper, X_level, level_mask

    def _wald_scale(self, coarse, features_coarse, X):
        """Conformal scale of the std by the Wald protocol: downscale the 2 x 2 aggregate back to ``coarse``."""
        cy, cx = coarse.shape[-2:]
        if cy // 2 < 4 or cx // 2 < 4:
            warnings.warn(
                f"The coarse grid ({cy} x {cx}) is too small to calibrate the standard deviation; "
                f"std_scale_ is left at 1.",
                stacklevel=3,
            )
            return 1.0
        level, upper, X_level, level_mask = self._level_up(coarse, features_coarse, self.features_used_)
        valid = np.isfinite(level.values)
        # The trend chosen here (not a new selection one level up) is what is calibrated.
        helper = Downscaler(
            **{
                **self.get_params(deep=False),
                "trend": self.trend_spec_,
                "calibrate_std": False,
                "trend_weight": None,  # trend_spec_ carries the weight
                "early_stopping": False,  # and the rounds
            }
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                helper.fit(upper, X_level, mask=level_mask)
                prediction, std = helper.predict(X_level, return_std=True)
        except ValueError as error:
            warnings.warn(
                f"The standard deviation could not be calibrated ({error}); std_scale_ is 1.", stacklevel=3
            )
            return 1.0
        error = np.abs(prediction.values - level.values)
        ratio = (error / np.where(std.values > 0, std.values, np.nan))[valid & np.isfinite(error)]
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size < 10:
            return 1.0
        self.calibration_ratio_ = ratio
        scale = float(np.quantile(ratio, CALIBRATION_COVERAGE) / _Z90)
        self.wald_scale_ = scale
        share = getattr(self, "trend_within_share_", 0.0)
        if scale < 1.0 and share > WALD_MAX_WITHIN_SHARE:
            logger.info(
                "The Wald protocol would narrow the std by %.2f, but %.0f %% of the fine trend's variance lies "
                "inside the coarse cells, which it cannot see (more than %.0f %%): the std is not narrowed.",
                scale,
                100 * share,
                100 * WALD_MAX_WITHIN_SHARE,
            )
            return 1.0
        return scale

    def _station_scale(self, X, stations, noise, prediction=None):
        """Split-conformal scale of the std at the ``stations`` (the uncalibrated std is predicted first)."""
        from .validation.stations import calibrate_std

        fine, std = prediction if prediction is not None else self.predict(X, return_std=True)
        calibrated = calibrate_std(fine, std, stations, coverage=CALIBRATION_COVERAGE, noise=noise)
        self.std_scale_stations_ = int(calibrated.attrs["std_scale_stations"])
        return float(calibrated.attrs["std_scale"])

    # -------------------------------------------------------------- predict

    def _check_predict_X(self, X):
        check_is_fitted(self, "trend_models_")
        X, variables = self._check_X(X)
        missing = [name for name in self.feature_names_ if name not in X.data_vars]
        if missing:
            raise ValueError(
                f"X is missing covariate(s) {missing} seen in fit; it has {sorted(X.data_vars)}. "
                f"Build X with the same options as for fit."
            )
        factor = self._nesting(self.coarse_, X)
        if factor != self.factor_:
            raise ValueError(
                f"X nests in the fitted coarse grid with factor {factor}, but fit saw factor {self.factor_}. "
                f"Predict on the fine grid used in fit."
            )
        return X

    def predict(self, X, return_std: bool = False, mask=None):
        """Predict the fine field (and its standard deviation).

        Parameters
        ----------
        X : xarray.Dataset
            Fine covariates on the grid used in :meth:`fit` (the same variables).
        return_std : bool
            Also return the standard deviation of the prediction (see the module notes).
        mask : xarray.DataArray of bool or "coarse", optional
            Overrides the mask given to :meth:`fit`.

        Returns
        -------
        fine : xarray.DataArray
            Named like the coarse field, with its CF attributes and time axis, plus ``downscale_method``.
        std : xarray.DataArray, only with ``return_std``
            Named ``<name>_std``.
        """
        X = self._check_predict_X(X)
        coarse = self.coarse_
        nt = coarse.sizes["time"] if "time" in coarse.dims else 1
        fine_mask = self.mask_ if mask is None else self._fine_mask(mask, coarse, X, self.factor_)
        cache = getattr(self, "_trend_cache", None)
        if cache is not None and cache[0] == self._trend_fingerprint(X, nt, fine_mask):
            trend = cache[1]
        else:
            trend = self._trend_fine(self._trend_features(X, nt, fine_mask), nt)
        template = self._fine_template(X, coarse)
        valid_pixels = np.isfinite(trend)

        residual, variance = self._residual_fine(template, nt)
        z = trend + residual
        prediction = self.transform_.inverse(z)
        if self.bounds_ != (None, None):
            prediction = _within(prediction, self.bounds_)
        prediction = np.where(valid_pixels, prediction, np.nan)
        fine = template.copy(data=prediction.reshape(template.shape))
        if self.residual == "atpk":
            fine = coherent_correction(fine, coarse, self.bounds_)
        name = coarse.name or "value"
        fine.name = name
        fine.attrs = {k: v for k, v in coarse.attrs.items() if k not in ("cell_methods",)}
        fine.attrs["downscale_method"] = self._method_description()
        if "spatial_ref" in fine.coords:
            fine.attrs["grid_mapping"] = "spatial_ref"
        if not return_std:
            return fine

        total = variance + self.trend_variance_[:, None, None]
        std_z = self.std_scale_ * np.sqrt(total)
        std = std_z * np.abs(self.transform_.derivative(z))
        std = np.where(valid_pixels, std, np.nan)
        std_da = template.copy(data=std.reshape(template.shape))
        std_da.name = f"{name}_std"
        std_da.attrs = {
            "long_name": f"standard deviation of the downscaled {coarse.attrs.get('long_name', name)}",
            "downscale_method": fine.attrs["downscale_method"],
        }
        if "units" in coarse.attrs:
            std_da.attrs["units"] = coarse.attrs["units"]
        if "spatial_ref" in std_da.coords:
            std_da.attrs["grid_mapping"] = "spatial_ref"
        return fine, std_da

    def _method_description(self):
        trend = self.trend if isinstance(self.trend, str) else type(self.trend).__name__
        if trend == "auto":
            trend = f"auto (chose {self.selected_trend_}"
            trend += f", weight {self.trend_weight_:.2f})" if self.selected_trend_ != "none" else ")"
        else:
            trend += _trend_details(self.n_rounds_, self.trend_weight_, isinstance(self.trend_weight, str))
        source = "block-mean covariates"
        if len(self.features_used_) < len(self.feature_names_):
            source = f"{len(self.features_used_)} of {len(self.feature_names_)} {source}"
        if getattr(self, "station_trend_", False):
            source += f" and {self.station_values_} station values"
        residual = "area-to-point kriging of the coarse residuals" if self.residual == "atpk" else "none"
        return (
            f"trend: {trend} on {source}; residual: {residual}; transform: "
            f"{self.transform_.name}; bounds: {self.bounds_}"
            + ("; coherent (block means equal the coarse field)" if self.residual == "atpk" else "")
        )

    def _residual_fine(self, template, nt):
        """Fine residual and kriging variance ``(nt, ny, nx)`` in the transformed space."""
        shape = (nt, *self.fine_shape_)
        if self.residual == "none":
            variance = np.array([np.nanvar(r) for r in self.residual_coarse_.values.reshape(nt, -1)])
            return np.zeros(shape), np.broadcast_to(variance[:, None, None], shape).copy()
        fine_grid = template.isel(time=0) if "time" in template.dims else template
        residual = np.empty(shape)
        variance = np.empty(shape)
        pieces = (
            [(self.atpk_[0], slice(None))]
            if len(self.atpk_) == 1
            else [(a, slice(t, t + 1)) for t, a in enumerate(self.atpk_)]
        )
        for atpk, times in pieces:
            mean, var = atpk.predict(fine_grid, return_variance=True)
            residual[times] = np.asarray(mean.values).reshape(-1, *self.fine_shape_)
            variance[times] = np.asarray(var.values).reshape(-1, *self.fine_shape_)
        # Coarse cells without data: a smooth fill of the neighbouring residuals, with the sill as variance.
        gaps = ~np.isfinite(residual)
        if gaps.any():
            coarse_residual = self.residual_coarse_.values.reshape(nt, *self.residual_coarse_.shape[-2:])
            for t in range(nt):
                if not gaps[t].any():
                    continue
                atpk = self.atpk_[0] if len(self.atpk_) == 1 else self.atpk_[t]
                sill = float(atpk.variogram_.sill + atpk.variogram_.nugget)
                _fill_gaps(residual[t], variance[t], gaps[t], coarse_residual[t], self.factor_, sill)
        return residual, variance

    # ---------------------------------------------------------------- score

    def score(self, coarse, X, mask=None):
        """R^2 of the block means of the prediction against ``coarse``, over its valid cells.

        The fitted cells are reproduced exactly (coherence), so score on cells left out of
        :meth:`fit` (NaN there), e.g. the test blocks of a spatial cross-validation.

        Returns
        -------
        float
        """
        check_is_fitted(self, "trend_models_")
        coarse = self._check_coarse(coarse)
        if coarse.shape != self.coarse_.shape:
            raise ValueError(
                f"coarse has shape {coarse.shape} but the model was fitted on {self.coarse_.shape}; "
                f"score on the grid (and time steps) used in fit."
            )
        fine = self.predict(X, mask=mask)
        back = grid_module.block_mean(fine, self.factor_, min_valid=1e-9).values
        truth = np.asarray(coarse.values, dtype=float)
        ok = np.isfinite(back) & np.isfinite(truth)
        if ok.sum() < 2:
            raise ValueError(f"coarse has {int(ok.sum())} valid cell(s) to score; at least 2 are needed.")
        residual = ((truth[ok] - back[ok]) ** 2).sum()
        total = ((truth[ok] - truth[ok].mean()) ** 2).sum()
        return float(1 - residual / total) if total > 0 else float(residual == 0)


def within_cell_sums(values, factor):
    """Sums from which :func:`within_cell_share` is computed, for one field or one tile of whole blocks.

    Returns ``[sum, sum of squares, count, sum over blocks of block sum squared / block count]`` of the
    finite values of ``values`` (2-D, sides multiples of ``factor``): sums over tiles or time steps add up.
    """
    values = np.asarray(values, dtype=np.float64)
    ny, nx = values.shape
    blocks = values.reshape(ny // factor, factor, nx // factor, factor)
    finite = np.isfinite(blocks)
    zeroed = np.where(finite, blocks, 0.0)
    block_sum = zeroed.sum(axis=(1, 3))
    block_count = finite.sum(axis=(1, 3))
    between = np.sum(block_sum[block_count > 0] ** 2 / block_count[block_count > 0])
    return np.array([zeroed.sum(), np.sum(zeroed**2), finite.sum(), between])


def within_cell_share(sums):
    """Share of a fine field's variance that lies inside its coarse cells (0: constant in every cell).

    ``sums`` come from :func:`within_cell_sums`: ``(sum of squares - between) / (sum of squares - sum^2 / n)``,
    the within-block sum of squares over the total. A constant field has share 0.

    Examples
    --------
    >>> import numpy as np
    >>> steps = np.array([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]])    # constant in each 2 x 2 block
    >>> float(within_cell_share(within_cell_sums(steps, 2)))
    0.0
    >>> stripes = np.array([[0.0, 2.0, 0.0, 2.0], [0.0, 2.0, 0.0, 2.0]])  # every block has the same mean
    >>> float(within_cell_share(within_cell_sums(stripes, 2)))
    1.0
    """
    total_sum, squares, count, between = (float(v) for v in sums)
    if count == 0:
        return 0.0
    total = squares - total_sum**2 / count
    if not total > 1e-12 * max(squares, 1e-300):
        return 0.0
    return float(min(max((squares - between) / total, 0.0), 1.0))


def _wald_guard(model, scale=None) -> str:
    """Why the Wald protocol's own scale was not applied (``scale``, default ``std_scale_``), or nothing."""
    own = getattr(model, "wald_scale_", None)
    if own is None or own == (model.std_scale_ if scale is None else scale):
        return ""
    return (
        f"; the protocol said {own:.2f}, but {model.trend_within_share_:.0%} of the trend's variance lies "
        "inside the coarse cells, where it cannot see, so the std is not narrowed"
    )


def _trend_details(n_rounds, weight, weight_from_cv):
    """What the spatial CV (or the user) set on a named trend, for its label: rounds and weight.

    Examples
    --------
    >>> _trend_details(37, 0.86, True), _trend_details(37, 0.5, False), _trend_details(None, 1.0, False)
    (' (37 rounds, weight 0.86 from spatial CV)', ' (37 rounds from spatial CV, weight 0.50)', '')
    >>> _trend_details(0, 1.0, False)
    ' (0 rounds from spatial CV: the constant mean)'
    """
    from_cv, given = [], []
    if n_rounds == 0:
        return " (0 rounds from spatial CV: the constant mean)"
    if n_rounds is not None:
        from_cv.append(f"{n_rounds} round" + ("s" if n_rounds != 1 else ""))
    if weight != 1.0:
        (from_cv if weight_from_cv else given).append(f"weight {weight:.2f}")
    text = ", ".join(([", ".join(from_cv) + " from spatial CV"] if from_cv else []) + given)
    return f" ({text})" if text else ""


def _blend(a, b):
    """The blend weight of a trend from its cross-validation errors (module notes, step 3).

    Returns the least-squares weight ``w`` of ``a - w b`` clipped to [0, 1] and rounded to 0.01, and
    the RMSE of the out-of-fold errors of the trend shrunk by ``w`` and unshrunk (``a - b``).
    """
    denominator = float(np.sum(b**2))
    weight = round(float(np.clip(np.sum(a * b) / denominator, 0.0, 1.0)), 2) if denominator > 0 else 0.0
    return weight, float(np.sqrt(np.mean((a - weight * b) ** 2))), float(np.sqrt(np.mean((a - b) ** 2)))


def _within(values, bounds):
    """``values`` clipped to ``bounds`` = (low, high), either of which may be None (no bound)."""
    low, high = bounds
    return np.clip(values, -np.inf if low is None else low, np.inf if high is None else high)


def _gain_in_standard_errors(gain, groups):
    """Mean of ``gain`` over the ``groups`` (a station's records over time form one), in standard errors.

    The per-group means are the independent values: their mean divided by its standard error (a
    one-sample t statistic). Positive when the gain is positive on average; 0 with fewer than two
    groups, infinite when every group gains exactly the same positive amount.

    Examples
    --------
    >>> gain = _gain_in_standard_errors(np.array([1.0, 2.0, 3.0, 2.0]), np.array(["a", "b", "c", "d"]))
    >>> round(float(gain), 6)                 # mean 2 over a standard error of sqrt(2 / 3) / 2
    4.898979
    """
    labels, group = np.unique(groups, return_inverse=True)
    if labels.size < 2:
        return 0.0
    means = np.bincount(group, weights=gain) / np.bincount(group)
    mean = float(np.mean(means))
    error = float(np.std(means, ddof=1)) / np.sqrt(labels.size)
    if error == 0:
        return np.inf if mean > 0 else 0.0
    return float(mean / error)


def _kriging_weights(coords, train, test, variogram, n_neighbours):
    """Ordinary kriging of the ``test`` points from their nearest ``train`` points.

    Returns ``(neighbours, weights)``, both ``(n_test, n)``: indices into ``coords`` and weights that
    sum to one on every row.
    """
    from scipy.spatial import cKDTree

    n = min(n_neighbours, train.size)
    _, nearest = cKDTree(coords[train]).query(coords[test], k=n)
    neighbours = train[np.asarray(nearest).reshape(test.size, n)]
    if not variogram.total_sill > 0:  # a constant field: every neighbour is as good as any other
        return neighbours, np.full((test.size, n), 1.0 / n)
    points = coords[neighbours]  # (n_test, n, 2)
    between = np.linalg.norm(points[:, :, None, :] - points[:, None, :, :], axis=-1)
    to_target = np.linalg.norm(points - coords[test][:, None, :], axis=-1)
    system = np.ones((test.size, n + 1, n + 1))
    system[:, :n, :n] = variogram.covariance(between)
    system[:, n, n] = 0.0
    right = np.ones((test.size, n + 1))
    right[:, :n] = variogram.covariance(to_target)
    # A flat variogram (no structure) makes the system singular: the mean of the neighbours is then the answer.
    system[:, :n, :n] += 1e-10 * variogram.total_sill * np.eye(n)
    try:
        solution = np.linalg.solve(system, right[..., None])[..., 0]
        weights = solution[:, :n]
        if not np.all(np.isfinite(weights)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        weights = np.full((test.size, n), 1.0 / n)
    return neighbours, weights


def _hash_values(values):
    """A hash of every bit of a contiguous array of any dtype (compiled when numba is there)."""
    kernel = grid_module._compiled_kernel("fingerprint")
    raw = values.reshape(-1).view(np.uint8)
    if kernel is None:
        return hash(raw.tobytes())
    whole = raw.size // 8 * 8  # the bytes that make whole 64-bit words, then the rest (at most 7)
    return hash((int(kernel(raw[:whole].view(np.uint64))), raw[whole:].tobytes()))


def _nanstd_rows(values):
    """``numpy.nanstd(values, axis=1)`` of a float64 ``(k, n)`` array, by the compiled kernel when there is one."""
    kernel = grid_module._compiled_kernel("nanstd_rows")
    if kernel is None:
        return np.nanstd(values, axis=1)
    return kernel(np.ascontiguousarray(values, dtype=np.float64))


def _fill_gaps(residual, variance, gaps, coarse_residual, factor, sill):
    """Fill the ``gaps`` of a fine ``residual`` and ``variance`` (2-D, in place) of one time step.

    The residual there is the bilinear upsampling of the coarse residuals with their NaN cells filled
    by the nearest valid ones (:func:`_fill_nearest`), the variance is ``sill``. The upsampling is
    evaluated only on the gap columns of each coarse row of blocks that has gaps, with the whole grid's
    interpolation weights (:func:`downscale.grid._bilinear`).
    """
    filled = _fill_nearest(coarse_residual)
    for block_row in np.flatnonzero(gaps.reshape(-1, factor, gaps.shape[1]).any(axis=(1, 2))):
        rows = slice(block_row * factor, (block_row + 1) * factor)
        columns = np.flatnonzero(gaps[rows].any(axis=0))
        smooth = grid_module._bilinear(filled, factor, rows, columns)
        here = gaps[rows][:, columns]
        residual[rows, columns] = np.where(here, smooth, residual[rows, columns])
        variance[rows, columns] = np.where(here, sill, variance[rows, columns])


def _fill_nearest(values):
    """Fill NaN cells of a 2-D array with the value of the nearest valid cell."""
    from scipy import ndimage

    missing = ~np.isfinite(values)
    if not missing.any():
        return values
    if missing.all():
        return np.zeros_like(values)
    _, (iy, ix) = ndimage.distance_transform_edt(missing, return_indices=True)
    return values[iy, ix]
