"""Target transforms for skewed and bounded variables, and the exact bound-preserving coherence correction.

Why a transform
---------------
Precipitation and NO2 are skewed and non-negative; soil moisture lives in
``[0, porosity]``. Regression and kriging work best on roughly Gaussian,
unbounded values, so the :class:`~downscale.Downscaler` fits its trend and
krige its residuals in a transformed space (``log1p`` for a lower bound only,
a scaled logit for two bounds) and brings the result back.

Why a correction, and why it keeps the bounds
---------------------------------------------
Back-transforming breaks coherence (the mean of ``exp`` is not the ``exp`` of
the mean), and an additive fix ``p + (c - m)`` breaks the bounds (it can push
dry pixels below zero). :func:`coherent_correction` restores the block means
*exactly* with a per-block blend toward one bound, which never leaves the
range. For a block with prediction ``p``, block mean ``m`` and coarse value
``c`` in ``[low, high]``:

* ``m > c`` (too wet): ``p' = low + (p - low) * (c - low) / (m - low)``, a
  contraction toward ``low``. Every ``p'`` lies in ``[low, p]``; the block
  mean is ``low + (m - low) (c - low) / (m - low) = c``. Pixels at ``low``
  stay at ``low`` (dry stays dry), and ``c = low`` makes the whole block ``low``.
* ``m < c`` with an upper bound: ``p' = high - (high - p) * (high - c) / (high - m)``,
  the mirror image (pixels move toward ``high``, never beyond).
* ``m < c`` and no upper bound: the same multiplicative rescale as the first
  case (a factor above one keeps ``p' >= low``).
* no bound at all: the additive shift ``p + (c - m)``.

Both formulas are affine in ``p`` within a block, so the weighted (area)
block mean of :func:`downscale.grid.block_mean` transforms the same way: the
identity holds on geographic grids too.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr  # noqa: F401 - the doctests use it

from .. import grid as grid_module

__all__ = [
    "IdentityTransform",
    "Log1pTransform",
    "LogitTransform",
    "coherent_correction",
    "make_transform",
]

#: Fraction of the range kept away from the bounds by the logit (logit(0) is -inf).
LOGIT_EPSILON = 1e-4


class IdentityTransform:
    """No transform: ``z = v``.

    Examples
    --------
    >>> IdentityTransform().inverse(IdentityTransform().forward(2.5))
    2.5
    """

    name = "none"

    def forward(self, values):
        return values

    def inverse(self, z):
        return z

    def derivative(self, z):
        """``d inverse / d z``, to carry a standard deviation from ``z`` to the variable (delta method)."""
        return np.ones_like(np.asarray(z, dtype=float))

    def __repr__(self):
        return "IdentityTransform()"


class Log1pTransform:
    """``z = log(1 + v - low)``: for skewed variables with a lower bound only (precipitation, NO2).

    The inverse is clipped at ``low``: a negative ``z`` (a trend below the
    bound) means ``low`` (a dry pixel).

    Examples
    --------
    >>> t = Log1pTransform(low=0.0)
    >>> float(t.inverse(t.forward(9.0)))
    9.0
    >>> float(t.inverse(-0.5))
    0.0
    """

    name = "log1p"

    def __init__(self, low: float = 0.0):
        self.low = float(low)

    def forward(self, values):
        return np.log1p(values - self.low)

    def inverse(self, z):
        return self.low + np.maximum(np.expm1(z), 0.0)

    def derivative(self, z):
        return np.exp(z)

    def __repr__(self):
        return f"Log1pTransform(low={self.low!r})"


class LogitTransform:
    """``z = logit((v - low) / (high - low))``: for variables with two bounds (soil moisture in [0, porosity]).

    Values are kept ``LOGIT_EPSILON`` of the range away from the bounds so
    that ``z`` is finite; the coherence correction can still reach the bounds exactly.

    Examples
    --------
    >>> t = LogitTransform(0.0, 0.45)
    >>> round(float(t.inverse(t.forward(0.3))), 12)
    0.3
    >>> float(t.forward(0.225))
    0.0
    """

    name = "logit"

    def __init__(self, low: float, high: float):
        self.low, self.high = float(low), float(high)
        if not self.high > self.low:
            raise ValueError(f"The logit transform needs low < high, got bounds ({low!r}, {high!r}).")

    def forward(self, values):
        u = (np.asarray(values, dtype=float) - self.low) / (self.high - self.low)
        u = np.clip(u, LOGIT_EPSILON, 1 - LOGIT_EPSILON)
        return np.log(u / (1 - u))

    def inverse(self, z):
        return self.low + (self.high - self.low) / (1 + np.exp(-np.asarray(z, dtype=float)))

    def derivative(self, z):
        s = 1 / (1 + np.exp(-np.asarray(z, dtype=float)))
        return (self.high - self.low) * s * (1 - s)

    def __repr__(self):
        return f"LogitTransform(low={self.low!r}, high={self.high!r})"


def make_transform(transform="auto", bounds=(None, None)):
    """Return the transform object for a ``transform`` name and the variable's ``bounds``.

    ``"auto"`` picks ``log1p`` when there is a lower bound and no upper one,
    ``logit`` when there are both, and no transform otherwise.

    Examples
    --------
    >>> make_transform("auto", (0.0, None))
    Log1pTransform(low=0.0)
    >>> make_transform("auto", (0.0, 0.45))
    LogitTransform(low=0.0, high=0.45)
    >>> make_transform("auto", (None, None))
    IdentityTransform()
    """
    low, high = bounds if bounds is not None else (None, None)
    if transform == "auto":
        if low is not None and high is None:
            return Log1pTransform(low)
        if low is not None and high is not None:
            return LogitTransform(low, high)
        return IdentityTransform()
    if transform in (None, "none"):
        return IdentityTransform()
    if transform == "log1p":
        if low is None:
            low = 0.0
        if high is not None:
            warnings.warn(
                f"transform='log1p' ignores the upper bound {high}; the coherence correction still keeps it.",
                stacklevel=2,
            )
        return Log1pTransform(low)
    if transform == "logit":
        if low is None or high is None:
            raise ValueError(
                f"transform='logit' needs both bounds, got bounds={bounds!r}. Pass bounds=(low, high), "
                f"e.g. bounds=(0.0, 0.45) for soil moisture with porosity 0.45."
            )
        return LogitTransform(low, high)
    raise ValueError(f"transform must be 'auto', 'none', 'log1p' or 'logit', got {transform!r}.")


def _correct_array(prediction, block_prediction, block_coarse, low, high):
    """Elementwise form of :func:`coherent_correction`: all arguments broadcast to the fine shape."""
    p, m, c = prediction, block_prediction, block_coarse
    with np.errstate(invalid="ignore", divide="ignore"):
        if low is None and high is None:
            return p + (c - m)
        out = p.copy()
        if low is not None:
            down = (m > c) | ((m < c) & (high is None))
            scale = (c - low) / (m - low)
            toward_low = low + (p - low) * scale
            # A block entirely at the lower bound cannot be scaled up: give it the coarse value.
            flat = down & ~(m - low > 0)
            out = np.where(down, np.where(flat, c, toward_low), out)
        if high is not None:
            up = (m < c) | ((m > c) & (low is None))
            scale = (high - c) / (high - m)
            toward_high = high - (high - p) * scale
            flat = up & ~(high - m > 0)
            out = np.where(up, np.where(flat, c, toward_high), out)
        if low is not None:
            out = np.maximum(out, low)
        if high is not None:
            out = np.minimum(out, high)
        return out


def coherent_correction(prediction, coarse, bounds=(None, None)):
    """Adjust a fine prediction so that its block means equal ``coarse`` exactly, within ``bounds``.

    Parameters
    ----------
    prediction : xarray.DataArray
        Fine field ``(..., y, x)`` on a grid nested in ``coarse``, inside the bounds. NaN pixels
        are left out of the block means and stay NaN.
    coarse : xarray.DataArray
        Target block means ``(..., y, x)`` inside the bounds; NaN cells leave their block unchanged.
    bounds : (float or None, float or None)

    Returns
    -------
    xarray.DataArray
        Same grid as ``prediction``; ``grid.block_mean(result, factor, min_valid=1e-9) == coarse``
        wherever both are defined, and every value within the bounds.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((4, 4), 1.0)
    >>> fine = xr.DataArray(np.tile([[0.0, 3.0], [3.0, 6.0]], (2, 2)), dims=("y", "x"), coords=g.coords)
    >>> coarse = ds.grid.block_mean(fine, 2) * 0 + 1.5          # every block mean is 3
    >>> coherent_correction(fine, coarse, bounds=(0.0, None)).values[:2, :2].tolist()  # dry stays dry
    [[0.0, 1.5], [1.5, 3.0]]
    >>> coherent_correction(fine, coarse * 0 + 5.0, bounds=(0.0, 6.0)).values[:2, :2].tolist()
    [[4.0, 5.0], [5.0, 6.0]]
    """
    low, high = bounds if bounds is not None else (None, None)
    factor = grid_module.nesting_factor(coarse, prediction)
    block = grid_module.block_mean(prediction, factor, min_valid=1e-9)
    values = np.asarray(prediction.values, dtype=np.float64)
    *lead, cy, cx = block.shape
    # Each block as axes (coarse row, row in block, coarse column, column in block): the block
    # means and coarse values broadcast over their blocks without fine-size copies.
    blocks = values.reshape(*lead, cy, factor, cx, factor)
    m = block.values.reshape(*lead, cy, 1, cx, 1)
    c = np.asarray(coarse.transpose(*block.dims).values, dtype=np.float64).reshape(*lead, cy, 1, cx, 1)
    corrected = _correct_array(blocks, m, c, low, high)
    corrected = np.where(np.isfinite(c) & np.isfinite(m), corrected, blocks)
    return prediction.copy(data=corrected.reshape(values.shape))
