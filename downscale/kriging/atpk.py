"""Fast area-to-point kriging (ATPK) of a coarse field onto its nested fine grid.

Area-to-point kriging predicts point (fine-pixel) values from block (coarse
cell) data with a point-support variogram. With the box point spread function
and no nugget the prediction is *coherent*: its block mean over every valid
coarse cell equals the coarse value (Kyriakidis 2004).

Why it is fast. On a regular nested grid the covariances only depend on
offsets: block-to-block covariances on the coarse offset between two blocks,
block-to-point covariances on the coarse offset and on the fine pixel's
position inside its block. Both come from one evaluation of the point
covariance on the lattice of fine-cell offsets, averaged with the PSF kernel
(two matrix products, never a loop over pairs of fine cells). With a fixed
``neighbours x neighbours`` window of coarse cells, the kriging system of a
coarse cell only depends on which of its neighbours are missing (grid edges
and NaN holes count as missing), so every distinct pattern is factorised once
and solved for all ``factor x factor`` sub-pixel right-hand sides together.
The weights are then applied to every coarse cell with that pattern as one
gather and one matrix product. Weights are cached per pattern and reused
across time steps and calls.

References
----------
Kyriakidis, P. C. (2004). A geostatistical framework for area-to-point spatial
interpolation. Geographical Analysis 36, 259-289.

Wang, Q., Shi, W., Atkinson, P. M., Zhao, Y. (2015). Downscaling MODIS images
with area-to-point regression kriging. Remote Sensing of Environment 166, 191-204.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from scipy import linalg

from .. import grid as grid_module
from .variogram import (
    MIN_VALID_CELLS,
    MODELS,
    VariogramModel,
    deconvolve_variogram,
    empirical_variogram,
    fit_variogram,
    grid_cell_size,
    psf_kernel,
)

__all__ = ["ATPK"]


# ---------------------------------------------------------------- covariances


def _kernel_covariances(correlation, cell_size, factor, half, psf, fwhm):
    """Block-to-block ``(4h+1, 4h+1)`` and block-to-point ``(n*n, f*f)`` correlations.

    ``correlation(h)`` is the point correlation (metres). Blocks are the coarse
    cells, discretised into their ``factor x factor`` fine cells and weighted
    by the PSF kernel; points are fine-cell centres of the central block.
    """
    f = int(factor)
    dy, dx = cell_size[0] / f, cell_size[1] / f
    n = 2 * half + 1
    if psf == "point":
        lags = np.arange(-2 * half, 2 * half + 1)
        block = correlation(np.hypot(lags[:, None] * cell_size[0], lags[None, :] * cell_size[1]))
        centre = (f - 1) / 2.0
        offsets = (np.arange(-half, half + 1)[:, None] * f + centre - np.arange(f)[None, :]).ravel()
        point = correlation(np.hypot(offsets[:, None] * dy, offsets[None, :] * dx))
        point = point.reshape(n, f, n, f).transpose(0, 2, 1, 3).reshape(n * n, f * f)
        return block, point
    kernel, first = psf_kernel(psf, f, fwhm)
    last = first + kernel.size - 1
    # G(k) = sum_b K(b) C(k + b): the PSF-weighted covariance between a block and a point at offset -k.
    k_min = min(-half * f - f + 1, -2 * half * f - last)
    k_max = max(half * f, 2 * half * f - first)
    m = np.arange(k_min + first, k_max + last + 1)  # lattice of point offsets (fine cells)
    ks = np.arange(k_min, k_max + 1)
    spread = np.zeros((ks.size, m.size))
    rows = np.arange(ks.size)
    for j, weight in enumerate(kernel):
        spread[rows, rows + j] = weight  # column of C(k + first + j) for row k
    lattice = correlation(np.hypot(m[:, None] * dy, m[None, :] * dx))
    g = spread @ lattice @ spread.T
    # Block-to-point: G(Delta * f - p).
    index = (np.arange(-half, half + 1)[:, None] * f - np.arange(f)[None, :]).ravel() - k_min
    point = g[np.ix_(index, index)].reshape(n, f, n, f).transpose(0, 2, 1, 3).reshape(n * n, f * f)
    # Block-to-block: sum_a K(a) G(Delta * f - a), exactly the PSF average of the block-to-point values.
    index = (
        np.arange(-2 * half, 2 * half + 1)[:, None] * f - np.arange(first, last + 1)[None, :]
    ).ravel() - k_min
    rows_g = g[index, :].reshape(4 * half + 1, kernel.size, -1)
    rows_g = np.einsum("dak,a->dk", rows_g, kernel)
    block = np.einsum("dea,a->de", rows_g[:, index].reshape(4 * half + 1, 4 * half + 1, kernel.size), kernel)
    return block, point


class _Plan:
    """Covariances and per-pattern kriging weights for one factor (unit-sill point model)."""

    def __init__(self, correlation, cell_size, factor, neighbours, psf, fwhm, kind, noise):
        self.factor = int(factor)
        self.half = neighbours // 2
        self.n = neighbours
        self.kind = kind
        self.noise = float(noise)
        self.block, self.point = _kernel_covariances(correlation, cell_size, factor, self.half, psf, fwhm)
        offsets = np.arange(-self.half, self.half + 1)
        self.offset_y = np.repeat(offsets, self.n)
        self.offset_x = np.tile(offsets, self.n)
        self.cache = {}

    def weights(self, pattern):
        """Weights ``(k, f*f)`` and unit-sill variance ``(f*f,)`` for a window validity pattern."""
        key = pattern.tobytes()
        if key in self.cache:
            return self.cache[key]
        index = np.flatnonzero(pattern)
        dy = self.offset_y[index][:, None] - self.offset_y[index][None, :]
        dx = self.offset_x[index][:, None] - self.offset_x[index][None, :]
        k = index.size
        matrix = self.block[dy + 2 * self.half, dx + 2 * self.half].copy()
        # The noise (areal nugget) sits on the data only; the tiny jitter keeps very smooth
        # models (gaussian) solvable and is below the coherence tolerance.
        matrix[np.diag_indices(k)] += self.noise + 1e-12
        rhs = self.point[index]
        if self.kind == "ordinary":
            system = np.zeros((k + 1, k + 1))
            system[:k, :k] = matrix
            system[:k, k] = system[k, :k] = 1.0
            right = np.vstack([rhs, np.ones((1, rhs.shape[1]))])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", linalg.LinAlgWarning)
                solution = linalg.solve(system, right, assume_a="sym")
            weights, lagrange = solution[:k], solution[k]
            variance = 1.0 - np.einsum("kp,kp->p", weights, rhs) - lagrange
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", linalg.LinAlgWarning)
                weights = linalg.solve(matrix, rhs, assume_a="pos")
            variance = 1.0 - np.einsum("kp,kp->p", weights, rhs)
        result = (index, weights, np.maximum(variance, 0.0))
        self.cache[key] = result
        return result


def _predict_stack(
    plan, values, halo, sill, mean=None, row_weights=None, coherent=True, return_variance=True
):
    """Krige a ``(nt, ny + 2*halo, nx + 2*halo)`` stack onto the fine grid of its inner cells.

    Cells in the halo (and NaN cells) serve as neighbours only. Returns
    ``(prediction, variance)`` of shape ``(nt, ny*f, nx*f)`` (variance ``None``
    unless asked for).
    """
    f, h, n = plan.factor, plan.half, plan.n
    nt = values.shape[0]
    # Pad so that every inner cell has a full window; padding cells are missing.
    extra = max(h - halo, 0)
    if extra:
        values = np.pad(values, ((0, 0), (extra, extra), (extra, extra)), constant_values=np.nan)
        halo = h
    ny, nx = values.shape[1] - 2 * halo, values.shape[2] - 2 * halo
    trim = halo - h
    values = values[:, trim : values.shape[1] - trim, trim : values.shape[2] - trim]  # halo exactly h
    valid = np.isfinite(values)
    if plan.kind == "simple":
        if mean is None:
            mean = np.array([np.nanmean(v) if v.any() else 0.0 for v in np.where(valid, values, np.nan)])
        mean = np.broadcast_to(np.asarray(mean, dtype=float).ravel(), (nt,))
        centred = values - mean.reshape(-1, 1, 1)
    else:
        centred = values
    prediction = np.full((nt, ny * f, nx * f), np.nan)
    variance = np.full((nt, ny * f, nx * f), np.nan) if return_variance else None
    pred5 = prediction.reshape(nt, ny, f, nx, f)
    var5 = variance.reshape(nt, ny, f, nx, f) if return_variance else None

    # Group time steps that share a validity mask: they share patterns and weights.
    masks = np.packbits(valid.reshape(nt, -1), axis=1)
    unique_masks, group_of = np.unique(masks, axis=0, return_inverse=True)
    group_of = np.asarray(group_of).ravel()
    for group in range(unique_masks.shape[0]):
        times = np.flatnonzero(group_of == group)
        mask = valid[times[0]]
        windows = np.lib.stride_tricks.sliding_window_view(mask, (n, n)).reshape(ny, nx, n * n)
        home = mask[h : h + ny, h : h + nx]
        cell_y, cell_x = np.nonzero(home)
        if cell_y.size == 0:
            continue
        patterns = windows[cell_y, cell_x]
        unique_patterns, which = np.unique(patterns, axis=0, return_inverse=True)
        which = np.asarray(which).ravel()
        time_index = slice(None) if times.size == nt else times
        for p in range(unique_patterns.shape[0]):
            members = np.flatnonzero(which == p)
            iy, ix = cell_y[members], cell_x[members]
            index, weights, unit_variance = plan.weights(unique_patterns[p])
            gy = iy[:, None] + h + plan.offset_y[index][None, :]
            gx = ix[:, None] + h + plan.offset_x[index][None, :]
            data = centred[time_index][:, gy, gx]  # (t, cells, k)
            estimate = data @ weights  # (t, cells, f*f)
            if plan.kind == "simple":
                estimate += mean[time_index].reshape(-1, 1, 1)
            block = estimate.transpose(1, 0, 2).reshape(iy.size, -1, f, f)
            if times.size == nt:
                pred5[:, iy, :, ix, :] = block
                if return_variance:
                    var5[:, iy, :, ix, :] = (sill * unit_variance).reshape(1, 1, f, f)
            else:
                for j, t in enumerate(times):
                    pred5[t, iy, :, ix, :] = block[:, j]
                    if return_variance:
                        var5[t, iy, :, ix, :] = (sill * unit_variance).reshape(1, f, f)
    if coherent:
        # Remove the round-off left in the block means (orders of magnitude below 1e-9 on projected
        # grids) and apply the exact area weights of grid.block_mean on geographic grids.
        inner = values[:, h : h + ny, h : h + nx]
        if row_weights is None:
            block_means = pred5.mean(axis=(2, 4))
        else:
            w = np.asarray(row_weights, dtype=float).reshape(ny, f)
            w = w / w.sum(axis=1, keepdims=True)
            block_means = np.einsum("tiajb,ia->tij", pred5, w) / f
        pred5 += (inner - block_means)[:, :, None, :, None]
    return prediction, variance


# ----------------------------------------------------------------------- ATPK


class ATPK:
    """Area-to-point kriging of a coarse field onto its nested fine grid.

    Parameters
    ----------
    variogram : str or VariogramModel
        A model family (``"exponential"``, ``"spherical"``, ``"gaussian"``,
        ``"matern"``) fitted to the coarse field in :meth:`fit`, or a
        :class:`VariogramModel` used as the point-support model as it is.
    neighbours : int
        Odd side of the square window of coarse cells used for each coarse
        cell (5 means 5 x 5). Grid edges and NaN cells are missing neighbours.
    kind : {"ordinary", "simple"}
        Ordinary kriging (unknown local mean) or simple kriging around
        ``mean``.
    psf : {"box", "gaussian", "point"}
        Point spread function of a coarse cell: its box (the coarse value is
        the mean over the cell, which makes the prediction coherent), a
        Gaussian of full width at half maximum ``psf_fwhm`` coarse cells, or a
        point at the cell centre (plain point kriging of the cell centres).
    psf_fwhm : float
        Width of the Gaussian PSF in coarse cells.
    deconvolve : bool
        Deconvolve the fitted areal variogram to point support (Goovaerts
        2008, with the empirical areal variogram as target); otherwise the
        areal model is used as the point model.
    nugget : float or "fit"
        Nugget of the areal variogram: 0 by default, ``"fit"`` to estimate it.
        A nugget is treated as noise on the coarse values (measurement error
        and sub-cell variation that the coarse cells do not share), not as a
        point-scale process: it is added to the block-to-block covariances
        only. The coarse data are then smoothed, not honoured, and the
        prediction is not coherent. Coherence requires no nugget.
    mean : float, optional
        Mean for simple kriging; default the mean of the valid values of each
        time step.
    nu : float
        Matern smoothness.

    Attributes
    ----------
    variogram_ : VariogramModel
        Point-support model used for kriging.
    areal_variogram_ : VariogramModel or None
        Model fitted to the coarse field (``None`` when a model was given).
    empirical_variogram_ : EmpiricalVariogram or None

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import downscale as ds
    >>> g = ds.grid.make_grid((6, 6), 25_000.0, crs="EPSG:32632")
    >>> coarse = xr.DataArray(np.arange(36.0).reshape(6, 6), dims=("y", "x"), coords=g.coords)
    >>> model = VariogramModel("exponential", sill=100.0, range=150_000.0)
    >>> fine, var = ATPK(variogram=model).fit(coarse).predict(5, return_variance=True)
    >>> fine.shape
    (30, 30)
    >>> bool(np.allclose(ds.grid.block_mean(fine, 5), coarse, rtol=1e-12))
    True
    """

    def __init__(
        self,
        variogram="exponential",
        neighbours: int = 5,
        kind: str = "ordinary",
        psf: str = "box",
        psf_fwhm: float = 1.0,
        deconvolve: bool = True,
        nugget=0.0,
        mean=None,
        nu: float = 1.5,
    ):
        self.variogram = variogram
        self.neighbours = neighbours
        self.kind = kind
        self.psf = psf
        self.psf_fwhm = psf_fwhm
        self.deconvolve = deconvolve
        self.nugget = nugget
        self.mean = mean
        self.nu = nu

    # ------------------------------------------------------------------ fit

    def _check_parameters(self):
        n = self.neighbours
        if isinstance(n, bool) or not float(n).is_integer() or int(n) < 1 or int(n) % 2 == 0:
            raise ValueError(f"neighbours must be a positive odd whole number (e.g. 5 for 5 x 5), got {n!r}.")
        if self.kind not in ("ordinary", "simple"):
            raise ValueError(f"kind must be 'ordinary' or 'simple', got {self.kind!r}.")
        if self.psf not in ("box", "gaussian", "point"):
            raise ValueError(f"psf must be 'box', 'gaussian' or 'point', got {self.psf!r}.")
        if not isinstance(self.variogram, VariogramModel) and self.variogram not in MODELS:
            raise ValueError(
                f"variogram must be one of {MODELS} or a VariogramModel, got {self.variogram!r}."
            )

    def fit(self, residual_coarse):
        """Fit the variogram to a coarse field ``(y, x)`` or ``(time, y, x)`` (NaN allowed).

        One variogram is fitted for all time steps (pooled empirical
        variogram). Dask-backed input stays lazy for :meth:`predict`; only its
        variogram is computed.

        Returns
        -------
        self
        """
        self._check_parameters()
        if not isinstance(residual_coarse, xr.DataArray):
            raise TypeError(
                f"residual_coarse must be an xarray DataArray with dims (..., 'y', 'x'), got "
                f"{type(residual_coarse).__name__}. Wrap arrays with `downscale.grid.make_grid` coordinates."
            )
        grid_module.check_grid(residual_coarse, name="residual_coarse")
        data = residual_coarse.transpose(..., "y", "x")
        self.cell_size_ = grid_cell_size(data)
        values = data.data
        lazy = hasattr(values, "dask")
        computed = np.asarray(data.values if not lazy else values.compute(), dtype=np.float64)
        n_valid = int(np.isfinite(computed).sum())
        if n_valid < MIN_VALID_CELLS:
            raise ValueError(
                f"residual_coarse has {n_valid} valid cells; area-to-point kriging needs at least "
                f"{MIN_VALID_CELLS}. Check the mask, or use a larger area."
            )
        self.empirical_variogram_ = None
        self.areal_variogram_ = None
        if isinstance(self.variogram, VariogramModel):
            point = self.variogram
            noise = 0.0
        else:
            empirical = empirical_variogram(computed, cell_size=self.cell_size_)
            areal = fit_variogram(empirical, self.variogram, nugget=self.nugget, nu=self.nu)
            self.empirical_variogram_ = empirical
            self.areal_variogram_ = areal
            noise = areal.nugget
            if self.deconvolve and self.psf != "point" and areal.sill > 0:
                point = deconvolve_variogram(
                    areal, empirical, psf=self.psf, fwhm=self.psf_fwhm, target="empirical"
                )
            else:
                point = VariogramModel(areal.model, sill=areal.sill, range=areal.range, nu=areal.nu)
        # The point model's own nugget (a given model) is treated like the areal one: noise on the data.
        noise = noise + point.nugget
        self.variogram_ = point
        self._noise = noise
        self._sill = point.sill if point.sill > 0 else 0.0
        self._data = data
        self._lazy = lazy
        self._plans = {}
        return self

    def _check_is_fitted(self):
        if not hasattr(self, "variogram_"):
            raise RuntimeError("This ATPK is not fitted yet; call `fit(residual_coarse)` first.")

    def _plan(self, factor):
        if factor not in self._plans:
            unit = VariogramModel(self.variogram_.model, 1.0, self.variogram_.range, 0.0, self.variogram_.nu)
            # The noise ratio is relative to the structured sill; a zero sill makes the weights those
            # of the correlation model, and the variance zero.
            ratio = self._noise / self._sill if self._sill > 0 else 0.0
            self._plans[factor] = _Plan(
                unit.correlation,
                self.cell_size_,
                factor,
                int(self.neighbours),
                self.psf,
                self.psf_fwhm,
                self.kind,
                ratio,
            )
        return self._plans[factor]

    @property
    def coherent(self) -> bool:
        """True when predictions average back exactly to the coarse values (box PSF, no nugget)."""
        self._check_is_fitted()
        return self.psf == "box" and self._noise == 0

    # -------------------------------------------------------------- predict

    def predict(self, factor_or_fine_grid, return_variance: bool = False):
        """Predict on the nested fine grid.

        Parameters
        ----------
        factor_or_fine_grid : int or xarray object
            The nesting factor, or a fine grid that nests in the coarse grid.
        return_variance : bool
            Also return the kriging (point prediction) variance, >= 0.

        Returns
        -------
        prediction : xarray.DataArray
            On the fine grid, with the coarse field's leading dims (time).
            Fine pixels of NaN coarse cells are NaN.
        variance : xarray.DataArray, only with ``return_variance``
        """
        self._check_is_fitted()
        data = self._data
        if isinstance(factor_or_fine_grid, (xr.DataArray, xr.Dataset)):
            factor = grid_module.nesting_factor(data, factor_or_fine_grid)
            target = factor_or_fine_grid
        else:
            factor = grid_module._check_factor(factor_or_fine_grid)
            target = grid_module.fine_grid(data, factor)
        plan = self._plan(factor)
        row_weights = None
        if grid_module.is_geographic(data):
            row_weights = grid_module.block_sum_weights(grid_module.fine_grid(data, factor), factor)
        lead_shape = data.shape[:-2]
        ny, nx = data.shape[-2:]
        nt = int(np.prod(lead_shape)) if lead_shape else 1
        coherent = self.coherent and getattr(self, "_polish", True)
        options = dict(sill=self._sill, mean=self.mean, coherent=coherent)
        if self._lazy:
            prediction, variance = self._predict_dask(plan, row_weights, return_variance, options)
        else:
            stack = np.asarray(data.values, dtype=np.float64).reshape(nt, ny, nx)
            prediction, variance = _predict_stack(
                plan, stack, 0, row_weights=row_weights, return_variance=return_variance, **options
            )
        shape = (*lead_shape, ny * factor, nx * factor)
        coords = {k: v for k, v in data.coords.items() if "y" not in v.dims and "x" not in v.dims}
        coords.update(y=target["y"], x=target["x"])
        # The CRS travels as the 'spatial_ref' coordinate; set_crs (a deep copy) only when it is missing.
        crs = grid_module.get_crs(data)
        needs_crs = crs is not None and "spatial_ref" not in coords

        def wrap(values, name, attrs):
            out = xr.DataArray(values.reshape(shape), dims=data.dims, coords=coords, name=name, attrs=attrs)
            if "spatial_ref" in coords:
                out.attrs["grid_mapping"] = "spatial_ref"
            return grid_module.set_crs(out, crs) if needs_crs else out

        out = wrap(prediction, data.name, dict(data.attrs))
        if not return_variance:
            return out
        attrs = {"long_name": "area-to-point kriging variance"}
        if "units" in data.attrs:
            attrs["units"] = f"({data.attrs['units']})2"
        name = f"{data.name}_kriging_variance" if data.name else "kriging_variance"
        return out, wrap(variance, name, attrs)

    def _predict_dask(self, plan, row_weights, return_variance, options):
        """Tiles of coarse blocks with a halo of ``neighbours // 2`` cells (NaN beyond the grid)."""
        import dask.array as da

        data = self._data
        f, h = plan.factor, plan.half
        ny, nx = data.shape[-2:]
        array = data.data.reshape(-1, ny, nx)
        padded = da.overlap.overlap(
            array, depth={0: 0, 1: h, 2: h}, boundary={0: "none", 1: np.nan, 2: np.nan}
        )

        def tile(block, block_info=None):
            rows = None
            if row_weights is not None:
                start, stop = block_info[None]["array-location"][2]
                rows = row_weights[start:stop]
            prediction, variance = _predict_stack(
                plan,
                np.asarray(block, dtype=np.float64),
                h,
                row_weights=rows,
                return_variance=return_variance,
                **options,
            )
            if variance is None:
                variance = np.zeros_like(prediction)
            return np.stack([prediction, variance])

        chunks = (
            (2,),
            array.chunks[0],
            # dask may have merged small tiles to fit the halo: take the tiles from the padded array.
            tuple((c - 2 * h) * f for c in padded.chunks[1]),
            tuple((c - 2 * h) * f for c in padded.chunks[2]),
        )
        result = da.map_blocks(tile, padded, dtype=np.float64, chunks=chunks, new_axis=[0])
        return result[0], (result[1] if return_variance else None)
