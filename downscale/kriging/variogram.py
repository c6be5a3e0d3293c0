"""Variograms of coarse (areal) fields: empirical, model fitting, regularisation and deconvolution.

The workflow of area-to-point kriging needs a *point-support* variogram, but
only block (areal) data are observed. This module

1. computes the empirical variogram of a field on its regular grid, for every
   lag vector at once with FFTs (NaN-aware, pooled over time steps), then bins
   it by distance (:func:`empirical_variogram`);
2. fits an exponential, spherical, gaussian or Matern model, with or without a
   nugget (:func:`fit_variogram`), falling back to a documented default with a
   warning when the fit fails;
3. regularises a point model over the coarse block (:func:`regularize_variogram`)
   and inverts that operation with the iterative procedure of Goovaerts (2008)
   (:func:`deconvolve_variogram`), so that the regularised point model
   reproduces the fitted areal variogram.

Model conventions follow PyKrige for the exponential, spherical and gaussian
models (``range`` is the practical range: the exponential reaches 95 % of its
sill at ``range``) and GSTools for the Matern model (``range`` is the length
scale, ``nu`` the smoothness). Distances are in metres.

References
----------
Goovaerts, P. (2008). Kriging and semivariogram deconvolution in the presence
of irregular geographical units. Mathematical Geosciences 40, 101-128.

Wang, Q., Shi, W., Atkinson, P. M., Zhao, Y. (2015). Downscaling MODIS images
with area-to-point regression kriging. Remote Sensing of Environment 166, 191-204.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import xarray as xr
from scipy import optimize, signal, special

__all__ = [
    "MODELS",
    "MIN_VALID_CELLS",
    "EmpiricalVariogram",
    "VariogramModel",
    "deconvolve_variogram",
    "empirical_variogram",
    "fit_variogram",
    "psf_kernel",
    "regularize_variogram",
]

#: Variogram model families understood by :class:`VariogramModel`.
MODELS = ("exponential", "spherical", "gaussian", "matern")

#: Fewer valid cells than this and no variogram can be fitted: an error is raised.
MIN_VALID_CELLS = 10
#: Default cap of the empirical variogram's lags, in cells. Area-to-point kriging with a 5 x 5 or
#: 7 x 7 neighbourhood uses the variogram within a few cells; the regularisation in the deconvolution
#: costs memory with the square of the largest lag (about 80 MB for 100 cells, 320 MB for 200), so
#: without a cap the peak memory of a run would grow with the coarse domain.
MAX_LAG_CELLS = 50


class VariogramFitWarning(UserWarning):
    """The variogram fit failed and a default model was used instead."""


# ------------------------------------------------------------------- models


def _correlation(model: str, h, range_: float, nu: float = 1.5):
    """Correlation function rho(h) of a model family (rho(0) = 1), ``h`` in the units of ``range_``."""
    h = np.abs(np.asarray(h, dtype=np.float64))
    if model == "exponential":
        return np.exp(-3.0 * h / range_)
    if model == "gaussian":
        return np.exp(-((h / (range_ * 4.0 / 7.0)) ** 2))
    if model == "spherical":
        r = np.minimum(h / range_, 1.0)
        return 1.0 - 1.5 * r + 0.5 * r**3
    if model == "matern":
        scaled = np.sqrt(nu) * h / range_
        out = np.ones_like(scaled)
        positive = scaled > 0
        s = scaled[positive]
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            values = np.exp((1.0 - nu) * np.log(2.0) - special.gammaln(nu) + nu * np.log(s)) * special.kv(
                nu, s
            )
        out[positive] = np.where(np.isfinite(values), values, 0.0)
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"Unknown variogram model {model!r}; expected one of {MODELS}.")


@dataclass(frozen=True)
class VariogramModel:
    """An isotropic variogram model: ``gamma(h) = nugget + sill * (1 - rho(h / range))`` for ``h > 0``.

    Parameters
    ----------
    model : {"exponential", "spherical", "gaussian", "matern"}
    sill : float
        Partial sill (the structured part); the total sill is ``sill + nugget``.
    range : float
        Range in metres (practical range for exponential and gaussian as in
        PyKrige; length scale for matern as in GSTools).
    nugget : float
        Nugget (semivariance jump at the origin).
    nu : float
        Matern smoothness (ignored by the other models).

    Examples
    --------
    >>> vm = VariogramModel("exponential", sill=2.0, range=3000.0)
    >>> float(vm(0.0)), round(float(vm(3000.0)), 3)
    (0.0, 1.9)
    >>> round(float(vm.covariance(1000.0)), 4)
    0.7358
    """

    model: str
    sill: float
    range: float
    nugget: float = 0.0
    nu: float = 1.5

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"Unknown variogram model {self.model!r}; expected one of {MODELS}.")
        if not (self.sill >= 0 and self.range > 0 and self.nugget >= 0 and self.nu > 0):
            raise ValueError(
                f"A variogram needs sill >= 0, range > 0, nugget >= 0 and nu > 0; got sill={self.sill}, "
                f"range={self.range}, nugget={self.nugget}, nu={self.nu}."
            )

    @property
    def total_sill(self) -> float:
        """Partial sill plus nugget: the variance of the process."""
        return float(self.sill + self.nugget)

    def correlation(self, h):
        """Correlation of the structured part, ``rho(h)``, with ``rho(0) = 1``."""
        return _correlation(self.model, h, self.range, self.nu)

    def __call__(self, h):
        """Semivariance at distance ``h`` (metres); zero at ``h = 0``."""
        h = np.asarray(h, dtype=np.float64)
        gamma = self.nugget + self.sill * (1.0 - self.correlation(h))
        return np.where(h == 0, 0.0, gamma)

    def covariance(self, h):
        """Covariance ``C(h) = total_sill - gamma(h)``."""
        return self.total_sill - self(h)

    def to_pykrige(self) -> dict:
        """The ``variogram_parameters`` dict for PyKrige (exponential, spherical, gaussian only)."""
        if self.model == "matern":
            raise ValueError("PyKrige has no Matern model; use exponential, spherical or gaussian.")
        return {"sill": self.total_sill, "range": self.range, "nugget": self.nugget}


# ---------------------------------------------------------------- empirical


@dataclass
class EmpiricalVariogram:
    """A binned empirical variogram, plus the per-lag-vector values it was binned from.

    Attributes
    ----------
    lags : ndarray
        Pair-weighted mean distance (metres) of each bin.
    gamma : ndarray
        Semivariance of each bin.
    counts : ndarray
        Number of pairs in each bin.
    cell_size : (float, float)
        ``(dy, dx)`` of the grid cells in metres.
    variance : float
        Variance of the valid values (pooled over time).
    vectors : ndarray of int, shape (n, 2)
        Lag vectors ``(dy, dx)`` in cells (one half-plane) that fall in the bins.
    vector_counts, vector_gamma, vector_bin : ndarray
        Pairs, semivariance and bin index of each lag vector.
    """

    lags: np.ndarray
    gamma: np.ndarray
    counts: np.ndarray
    cell_size: tuple
    variance: float
    n_valid: int
    vectors: np.ndarray = field(repr=False)
    vector_counts: np.ndarray = field(repr=False)
    vector_gamma: np.ndarray = field(repr=False)
    vector_bin: np.ndarray = field(repr=False)


def _as_stack(field):
    """Values of a grid as a float64 ``(n, ny, nx)`` array (leading dims flattened)."""
    values = np.asarray(field.values if isinstance(field, xr.DataArray) else field, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"Expected a 2-D (y, x) or 3-D (time, y, x) field, got {values.ndim} dimension(s).")
    return values.reshape(-1, *values.shape[-2:])


def grid_cell_size(field) -> tuple:
    """``(dy, dx)`` in metres of a grid DataArray (at its central row on geographic grids)."""
    from .. import grid as grid_module

    grid_module.check_grid(field, name="field")
    dy, dx = grid_module.cell_size_metres(field)
    middle = len(dy) // 2
    return float(dy[middle]), float(dx[middle])


def empirical_variogram(field, cell_size=None, max_lag=None, bin_width=None, min_pairs: int = 10):
    """Empirical (Matheron) variogram of a gridded field, computed for all lags at once with FFTs.

    NaN cells are left out. A ``(time, y, x)`` stack gives one variogram pooled
    over time (pair sums and counts are added over time steps), i.e. the
    pair-weighted average of the per-time variograms.

    Parameters
    ----------
    field : xarray.DataArray or ndarray
        ``(y, x)`` or ``(time, y, x)``. A DataArray must be a grid (see
        :func:`downscale.grid.check_grid`); its cell size in metres is read from
        its coordinates and CRS.
    cell_size : float or (float, float), optional
        Cell size ``(dy, dx)`` in metres; required for a plain array.
    max_lag : float, optional
        Largest distance (metres); default half the smaller extent of the grid
        (at least three cells, at most ``MAX_LAG_CELLS``).
    bin_width : float, optional
        Bin width (metres); default the larger cell side.
    min_pairs : int
        Bins with fewer pairs are dropped.

    Returns
    -------
    EmpiricalVariogram

    Examples
    --------
    >>> import numpy as np
    >>> field = np.add.outer(np.arange(8.0), np.zeros(8))    # a ramp along y: steps of 1 per row
    >>> ev = empirical_variogram(field, cell_size=1000.0)
    >>> ev.lags.size, float(ev.lags[0]), float(ev.gamma[0])   # first bin: lags (1, 0) and (0, 1)
    (4, 1000.0, 0.25)
    """
    if isinstance(field, xr.DataArray) and cell_size is None:
        cell_size = grid_cell_size(field)
    if cell_size is None:
        raise ValueError(
            "cell_size (metres) is required when the field is a plain array; pass cell_size=(dy, dx)."
        )
    dy, dx = (float(cell_size), float(cell_size)) if np.isscalar(cell_size) else map(float, cell_size)
    stack = _as_stack(field)
    _, ny, nx = stack.shape
    valid = np.isfinite(stack)
    n_valid = int(valid.sum())
    if n_valid < MIN_VALID_CELLS:
        raise ValueError(
            f"Too few valid cells to estimate a variogram: {n_valid} (at least {MIN_VALID_CELLS} are "
            f"needed). Use a larger area or more time steps, or pass a fitted VariogramModel instead."
        )
    values = stack - np.nanmean(stack)
    variance = float(np.nanmean(values**2))
    if max_lag is None:
        max_lag = max(min(0.5 * min(ny * dy, nx * dx), MAX_LAG_CELLS * max(dy, dx)), 3.0 * max(dy, dx))
    if bin_width is None:
        bin_width = max(dy, dx)

    # Pair sums for every lag vector (ky, kx): sum over valid pairs of (z_i - z_{i+k})^2 and their count.
    numerator = np.zeros((2 * ny - 1, 2 * nx - 1))
    counts = np.zeros_like(numerator)
    for t in range(stack.shape[0]):
        m = valid[t].astype(np.float64)
        if m.sum() < 2:
            continue
        z = np.where(valid[t], values[t], 0.0)
        z2 = z * z

        def corr(a, b):
            return signal.fftconvolve(a[::-1, ::-1], b, mode="full")

        numerator += corr(m, z2) + corr(z2, m) - 2.0 * corr(z, z)
        counts += corr(m, m)
    counts = np.rint(counts)
    ky, kx = np.meshgrid(np.arange(-(ny - 1), ny), np.arange(-(nx - 1), nx), indexing="ij")
    distance = np.hypot(ky * dy, kx * dx)
    half_plane = (ky > 0) | ((ky == 0) & (kx > 0))
    keep = half_plane & (counts > 0) & (distance <= max_lag + 1e-9 * max_lag)
    vec_counts = counts[keep]
    vec_gamma = np.maximum(numerator[keep], 0.0) / (2.0 * vec_counts)
    vec_distance = distance[keep]
    vectors = np.stack([ky[keep], kx[keep]], axis=1)
    vec_bin = np.floor(vec_distance / bin_width - 1e-9).astype(int)
    n_bins = int(vec_bin.max()) + 1 if vec_bin.size else 0
    bin_counts = np.bincount(vec_bin, weights=vec_counts, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_gamma = np.bincount(vec_bin, weights=vec_gamma * vec_counts, minlength=n_bins) / bin_counts
        bin_lags = np.bincount(vec_bin, weights=vec_distance * vec_counts, minlength=n_bins) / bin_counts
    good = bin_counts >= min_pairs
    if not good.any():
        raise ValueError(
            f"No lag has at least {min_pairs} pairs of valid cells ({n_valid} valid cells); the field is "
            f"too small or too sparse to estimate a variogram. Pass a fitted VariogramModel instead."
        )
    new_index = np.cumsum(good) - 1
    in_good = good[vec_bin]
    return EmpiricalVariogram(
        lags=bin_lags[good],
        gamma=bin_gamma[good],
        counts=bin_counts[good],
        cell_size=(dy, dx),
        variance=variance,
        n_valid=n_valid,
        vectors=vectors[in_good],
        vector_counts=vec_counts[in_good],
        vector_gamma=vec_gamma[in_good],
        vector_bin=new_index[vec_bin[in_good]],
    )


# ------------------------------------------------------------------ fitting


def _default_model(empirical: EmpiricalVariogram, model: str, nu: float) -> VariogramModel:
    """The fallback model: sill = field variance, range = half the largest lag, no nugget."""
    sill = empirical.variance if empirical.variance > 0 else 0.0
    return VariogramModel(model, sill=float(sill), range=float(0.5 * empirical.lags.max()), nu=nu)


def _least_squares_fit(lags, gamma, weights, model, fit_nugget, nu, initial, range_bounds, scale, max_iter):
    """Weighted least squares of (partial sill, range[, nugget]); returns (params, converged)."""
    sqrt_w = np.sqrt(weights / weights.sum())

    def residuals(p):
        sill, range_ = p[0], p[1]
        nugget = p[2] if fit_nugget else 0.0
        predicted = nugget + sill * (1.0 - _correlation(model, lags, range_, nu))
        return sqrt_w * (predicted - gamma) / scale

    lower = [0.0, range_bounds[0]] + ([0.0] if fit_nugget else [])
    upper = [10.0 * scale, range_bounds[1]] + ([10.0 * scale] if fit_nugget else [])
    x0 = np.clip(initial[: len(lower)], np.array(lower) + 1e-12, np.array(upper) * (1 - 1e-9))
    result = optimize.least_squares(residuals, x0, bounds=(lower, upper), max_nfev=max_iter, x_scale="jac")
    return result.x, bool(result.success and result.status > 0 and np.all(np.isfinite(result.x)))


def fit_variogram(
    empirical: EmpiricalVariogram,
    model: str = "exponential",
    nugget=0.0,
    nu: float = 1.5,
    max_iter: int = 200,
    initial: VariogramModel | None = None,
) -> VariogramModel:
    """Fit a variogram model to a binned empirical variogram (weighted by pair counts).

    When the fit fails (the optimiser does not converge within ``max_iter``
    evaluations, or the field has zero variance) a :class:`VariogramFitWarning`
    is issued and the documented default is returned: the same model family,
    partial sill equal to the field variance, range equal to half the largest
    lag, no nugget.

    The (practical) range is at least the cell size: a shorter structure
    cannot be told apart from a nugget on the grid. With the nugget fixed at 0
    (as area-to-point kriging keeps it), a field that looks like white noise is
    fitted with a range of one cell.

    Parameters
    ----------
    empirical : EmpiricalVariogram
    model : {"exponential", "spherical", "gaussian", "matern"}
    nugget : float or "fit"
        A fixed nugget (default 0, which keeps area-to-point kriging exactly
        coherent), or ``"fit"`` to estimate it.
    nu : float
        Matern smoothness (held fixed).
    max_iter : int
        Largest number of model evaluations of the optimiser.
    initial : VariogramModel, optional
        Start one fit from this model's sill and range (falling back to the usual starts if it does
        not converge), instead of three fits from starting ranges of 0.2, 0.5 and 1 times the largest
        lag: for refits near a known answer, such as the steps of :func:`deconvolve_variogram`.

    Examples
    --------
    >>> import numpy as np
    >>> lags = np.arange(1.0, 11.0) * 1000
    >>> truth = VariogramModel("exponential", sill=2.0, range=4000.0)
    >>> ev = EmpiricalVariogram(lags, truth(lags), np.ones(10), (1000.0, 1000.0), 2.0, 100,
    ...                         None, None, None, None)
    >>> fitted = fit_variogram(ev, "exponential")
    >>> round(fitted.sill, 6), round(fitted.range, 3)
    (2.0, 4000.0)
    """
    if model not in MODELS:
        raise ValueError(f"Unknown variogram model {model!r}; expected one of {MODELS}.")
    fit_nugget = isinstance(nugget, str)
    if fit_nugget and nugget != "fit":
        raise ValueError(f"nugget must be a number or 'fit', got {nugget!r}.")
    fixed_nugget = 0.0 if fit_nugget else float(nugget)
    lags = np.asarray(empirical.lags, dtype=float)
    gamma = np.asarray(empirical.gamma, dtype=float) - fixed_nugget
    scale = float(max(empirical.variance, np.max(np.abs(empirical.gamma)), 0.0))
    if scale <= 0 or not np.isfinite(scale):
        warnings.warn(
            "The field has zero variance, so no variogram can be fitted; using the default model "
            "(zero sill, range half the largest lag).",
            VariogramFitWarning,
            stacklevel=2,
        )
        return replace(_default_model(empirical, model, nu), nugget=fixed_nugget)
    # No structure shorter than a cell: on this grid it would look like a nugget. Without a floor, a
    # fit with a fixed nugget (area-to-point kriging keeps it 0) turns a field that looks like white
    # noise into a tiny range, which deconvolution then turns into a huge point sill.
    step = min(empirical.cell_size)
    range_bounds = (step, 20.0 * lags.max())
    best = None
    # Several starting ranges guard against local minima of the range.
    starts = [
        np.array([max(gamma.max(), 1e-6 * scale), start * lags.max(), 0.1 * scale])
        for start in (0.2, 0.5, 1.0)
    ]
    if initial is not None:
        starts = [np.array([initial.sill, initial.range, initial.nugget if fit_nugget else 0.1 * scale])]
    for x0 in starts:
        params, converged = _least_squares_fit(
            lags, gamma, empirical.counts, model, fit_nugget, nu, x0, range_bounds, scale, max_iter
        )
        if converged:
            sill, range_ = float(params[0]), float(params[1])
            nug = float(params[2]) if fit_nugget else fixed_nugget
            candidate = VariogramModel(model, sill=sill, range=range_, nugget=nug, nu=nu)
            cost = float(np.sum(empirical.counts * (candidate(lags) - empirical.gamma) ** 2))
            if best is None or cost < best[0]:
                best = (cost, candidate)
    if best is None and initial is not None:
        return fit_variogram(empirical, model, nugget=nugget, nu=nu, max_iter=max_iter)
    if best is None:
        warnings.warn(
            f"The {model} variogram fit did not converge within {max_iter} evaluations; using the "
            f"default model (partial sill = field variance, range = half the largest lag, nugget "
            f"{fixed_nugget:g}). Pass a fitted VariogramModel to choose it yourself.",
            VariogramFitWarning,
            stacklevel=2,
        )
        return replace(_default_model(empirical, model, nu), nugget=fixed_nugget)
    return best[1]


# ----------------------------------------------------- regularisation


def psf_kernel(psf: str, subdivisions: int, fwhm_cells: float = 1.0) -> tuple:
    """1-D point spread function of a coarse cell sampled on ``subdivisions`` sub-cells per cell.

    Returns ``(weights, first)``: weights summing to one, and the sub-cell
    index of the first weight relative to the first sub-cell of the block (0
    for the box; negative for a Gaussian, which extends beyond the block).
    ``fwhm_cells`` is the Gaussian's full width at half maximum in coarse cells.
    """
    s = int(subdivisions)
    if psf == "box":
        return np.full(s, 1.0 / s), 0
    if psf == "gaussian":
        sigma = fwhm_cells * s / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        reach = int(np.ceil(4.0 * sigma))
        offsets = np.arange(-reach, s + reach)
        centre = (s - 1) / 2.0
        weights = np.exp(-0.5 * ((offsets - centre) / sigma) ** 2)
        return weights / weights.sum(), -reach
    raise ValueError(f"psf must be 'box', 'gaussian' or 'point', got {psf!r}.")


class _BlockCorrelation:
    """Mean correlation between two blocks separated by ``block_lags`` (n, 2) cells, PSF-weighted.

    Called with a point model (``_BlockCorrelation(lags, cell_size)(model)``). The point correlation
    is evaluated once on the lattice of sub-cell offsets that the lags need; the double PSF average
    is then the separable autocorrelation of the PSF kernel applied along each axis (two small
    matrix products), so the cost does not grow with the number of lags. The lattice distances and
    the spreading matrices depend on the lags only and are computed once, for every model the
    deconvolution tries.
    """

    def __init__(self, block_lags, cell_size, psf="box", subdivisions=16, fwhm=1.0):
        dy, dx = cell_size
        self.block_lags = np.abs(np.atleast_2d(np.asarray(block_lags, dtype=np.int64)))
        self.psf = psf
        if psf == "point":
            self.distance = np.hypot(self.block_lags[:, 0] * dy, self.block_lags[:, 1] * dx)
            return
        s = int(subdivisions)
        kernel, _ = psf_kernel(psf, s, fwhm)
        auto = np.correlate(kernel, kernel, mode="full")  # offsets -(L-1)..(L-1), symmetric
        reach = kernel.size - 1

        def spread(n):
            # Row k of the matrix puts the autocorrelation at lattice offsets k*s - reach .. k*s + reach.
            size = (n - 1) * s + 2 * reach + 1
            matrix = np.zeros((n, size))
            for k in range(n):
                matrix[k, k * s : k * s + auto.size] = auto
            return matrix, np.arange(size) - reach

        self.spread_y, offsets_y = spread(int(self.block_lags[:, 0].max()) + 1)
        self.spread_x, offsets_x = spread(int(self.block_lags[:, 1].max()) + 1)
        self.distance = np.hypot(offsets_y[:, None] * (dy / s), offsets_x[None, :] * (dx / s))

    def __call__(self, model: VariogramModel):
        rho = model.correlation(self.distance)
        if self.psf == "point":
            return rho
        mean = self.spread_y @ rho @ self.spread_x.T
        return mean[self.block_lags[:, 0], self.block_lags[:, 1]]


class _Regularisation:
    """:func:`regularize_variogram` on fixed block lags, for any point model (the geometry computed once)."""

    def __init__(self, block_lags, cell_size, psf="box", subdivisions=16, fwhm=1.0):
        self.zero = _BlockCorrelation([[0, 0]], cell_size, psf, subdivisions, fwhm)
        self.lags = _BlockCorrelation(block_lags, cell_size, psf, subdivisions, fwhm)

    def __call__(self, model: VariogramModel):
        return model.sill * (self.zero(model)[0] - self.lags(model))


def regularize_variogram(model: VariogramModel, block_lags, cell_size, psf="box", subdivisions=16, fwhm=1.0):
    """Regularise a point variogram over the coarse cell: the variogram of block averages.

    ``gamma_V(h) = C_VV(0) - C_VV(h)`` with ``C_VV`` the mean point covariance
    between two cells, each discretised into ``subdivisions x subdivisions``
    sub-cells (weighted by the PSF). The point nugget is averaged out.

    Parameters
    ----------
    model : VariogramModel
        Point-support model.
    block_lags : array (n, 2)
        Lag vectors ``(dy, dx)`` in coarse cells.
    cell_size : (float, float)
        Coarse cell size in metres.
    psf : {"box", "gaussian", "point"}
    subdivisions : int
    fwhm : float
        Gaussian PSF full width at half maximum in coarse cells.

    Examples
    --------
    >>> point = VariogramModel("exponential", sill=1.0, range=3000.0)
    >>> gamma = regularize_variogram(point, [[0, 1], [0, 10]], (1000.0, 1000.0))
    >>> bool(gamma[0] < point(1000.0)), round(float(gamma[1]), 2)   # block support lowers the sill
    (True, 0.6)
    """
    return _Regularisation(block_lags, cell_size, psf, subdivisions, fwhm)(model)


class _BinnedRegularisation:
    """Regularised variogram of a point model averaged over the lag vectors of each bin of ``empirical``.

    The average is pair-weighted. Each distinct model is regularised once: the deconvolution asks
    again for models it has already scored.
    """

    def __init__(self, empirical, psf, subdivisions, fwhm):
        self.empirical = empirical
        self.regularisation = _Regularisation(empirical.vectors, empirical.cell_size, psf, subdivisions, fwhm)
        n_bins = empirical.lags.size
        self.total = np.bincount(empirical.vector_bin, weights=empirical.vector_counts, minlength=n_bins)
        self.computed = {}  # model -> its binned regularised variogram

    def __call__(self, model: VariogramModel):
        if model not in self.computed:
            empirical = self.empirical
            weighted = self.regularisation(model) * empirical.vector_counts
            total = np.bincount(empirical.vector_bin, weights=weighted, minlength=empirical.lags.size)
            self.computed[model] = total / self.total
        return self.computed[model]


def deconvolve_variogram(
    areal: VariogramModel,
    empirical: EmpiricalVariogram,
    psf: str = "box",
    fwhm: float = 1.0,
    subdivisions: int = 16,
    max_iter: int = 30,
    tol: float = 1e-3,
    target: str = "model",
    return_error: bool = False,
):
    """Deconvolve a fitted areal variogram to a point-support model (Goovaerts 2008).

    Iterative procedure: start from the areal model as point model; at each
    step rescale the point semivariances by ``w(h) = 1 + (gamma_areal(h) -
    gamma_regularised(h)) / (s**2 sqrt(i))``, refit the model, and keep it if
    the mean relative difference ``D`` between its regularised variogram and
    the target decreased (otherwise halve ``w - 1`` and retry). It stops
    when ``D < tol``, after three steps without improvement, or ``max_iter``
    steps. A final direct least-squares adjustment of the point parameters on
    the relative differences polishes the result (it is kept only if it lowers
    the largest relative difference).

    The areal nugget is not deconvolved: the point model has the areal
    model's structured part only, and the nugget is returned unchanged in the
    point model's ``nugget`` field set to 0 (area-to-point kriging treats it as
    noise on the coarse values, see :class:`downscale.kriging.ATPK`).

    Parameters
    ----------
    areal : VariogramModel
        Model fitted to the areal (coarse) empirical variogram.
    empirical : EmpiricalVariogram
        Gives the lags (bins and lag vectors) on which both are compared.
    psf : {"box", "gaussian"}
    fwhm : float
        Gaussian PSF full width at half maximum, in coarse cells.
    subdivisions : int
        Discretisation of a coarse cell for the regularisation.
    max_iter, tol
        Stopping rules.
    target : {"model", "empirical"}
        What the regularised point model must reproduce: the fitted areal
        model (default) or the empirical areal variogram itself (Goovaerts'
        original choice). Block averaging makes every regularised variogram
        parabolic at the origin, so a fitted areal exponential or spherical
        model (linear at the origin) cannot be matched closely at the first lag;
        the gaussian and Matern families, or ``target="empirical"``, can.
    return_error : bool
        Also return the relative difference ``(regularised - target) / target`` at every bin.

    Returns
    -------
    point : VariogramModel
    errors : ndarray, only with ``return_error``

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> field = np.cumsum(np.cumsum(rng.normal(size=(24, 24)), 0), 1) / 10
    >>> ev = empirical_variogram(field, cell_size=25_000.0)
    >>> areal = fit_variogram(ev, "gaussian")
    >>> point, errors = deconvolve_variogram(areal, ev, return_error=True)
    >>> bool(point.sill >= areal.sill), bool(np.max(np.abs(errors)) < 0.05)
    (True, True)
    """
    if target not in ("model", "empirical"):
        raise ValueError(f"target must be 'model' or 'empirical', got {target!r}.")
    structured = replace(areal, nugget=0.0)
    if target == "model":
        target = structured(empirical.lags)
    else:
        target = np.asarray(empirical.gamma, dtype=float) - areal.nugget
    weights = empirical.counts
    if structured.sill <= 0 or np.any(target <= 0):
        # Nothing to deconvolve (a flat variogram, or a nugget as large as the data's semivariance).
        return (structured, np.zeros_like(target)) if return_error else structured
    lags = empirical.lags
    s2 = structured.sill

    regularised = _BinnedRegularisation(empirical, psf, subdivisions, fwhm)

    def discrepancy(model):
        return float(np.mean(np.abs(regularised(model) - target) / target))

    def refit(point_values, start):
        ev = replace(empirical, gamma=point_values, variance=float(max(point_values.max(), s2)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VariogramFitWarning)
            fitted = fit_variogram(ev, areal.model, nugget=0.0, nu=areal.nu, initial=start)
        return fitted if fitted.sill > 0 else start

    best = structured
    best_error = discrepancy(best)
    first_error = best_error
    stalls = 0
    for i in range(1, max_iter + 1):
        if best_error < tol or best_error < 0.01 * first_error or stalls >= 3:
            break
        w = 1.0 + (target - regularised(best)) / (s2 * np.sqrt(i))
        improved = False
        for _ in range(4):
            candidate = refit(best(lags) * w, best)
            error = discrepancy(candidate)
            if error < best_error:
                best, best_error, improved = candidate, error, True
                break
            w = 1.0 + (w - 1.0) / 2.0
        stalls = 0 if improved else stalls + 1

    # Direct polish on the relative differences (two or three parameters).
    def relative(params):
        model = replace(best, sill=float(params[0]), range=float(params[1]))
        return np.sqrt(weights / weights.sum()) * (regularised(model) - target) / target

    # The point range stays at least one coarse cell, as in the areal fit (see fit_variogram): a
    # shorter one is not identifiable from block data and only trades range for sill.
    low_range = max(1e-3 * best.range, min(empirical.cell_size))
    high_range = max(100 * best.range, 2 * low_range)
    try:
        result = optimize.least_squares(
            relative,
            [best.sill, float(np.clip(best.range, low_range, high_range))],
            bounds=([1e-12 * s2, low_range], [100 * s2, high_range]),
            max_nfev=100,
            x_scale="jac",
        )
        polished = replace(best, sill=float(result.x[0]), range=float(result.x[1]))
        if np.max(np.abs(regularised(polished) - target) / target) < np.max(
            np.abs(regularised(best) - target) / target
        ):
            best = polished
    except (ValueError, FloatingPointError):  # keep the iterative result
        pass
    if return_error:
        return best, (regularised(best) - target) / target
    return best
