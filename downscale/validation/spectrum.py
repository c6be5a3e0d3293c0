"""Hallucination check: radially averaged power spectra and the effective resolution they imply.

A downscaled field should carry the coarse field's variance at the large
scales and, at the fine scales, no more variance than the truth has. Its
radially averaged power spectrum, set against the coarse input's and (when
known) the truth's, shows both: power piling up at high wavenumbers beyond the
truth's is invented detail; power falling off early is smoothing. The
*effective resolution* is the wavelength below which the field keeps less than
a given fraction of the reference's power (Skamarock 2004 uses the same idea
for atmospheric models).

Spectra are power spectral densities (units of the field squared times m²),
averaged over annuli of width ``dk = 1 / (longest side)`` in cycles per metre,
after removing a least-squares plane (NaN cells are then set to the mean) and
applying a 2-D Hann window (its power loss is compensated), so that white noise
of variance ``s²`` on cells of ``dx * dy`` has a flat spectrum at ``s² dx dy``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["effective_resolution", "radial_power_spectrum", "spectrum_comparison"]


def _field_values(field):
    from ..grid import check_grid, grid_step, is_geographic

    check_grid(field, name="field")
    if not hasattr(field, "values") or hasattr(field, "data_vars"):
        raise TypeError("field must be an xarray DataArray with dims (y, x) or (time, y, x).")
    if is_geographic(field):
        raise ValueError(
            "The field is on a geographic (lat/lon) grid; spectra need regular coordinates in metres. "
            "Reproject it first, e.g. `field.rio.reproject(field.rio.estimate_utm_crs())`."
        )
    extra = [d for d in field.dims if d not in ("y", "x", "time")]
    if extra:
        raise ValueError(f"field must have dims (y, x) or (time, y, x); it also has {extra}.")
    values = np.asarray(field.transpose(..., "y", "x").values, dtype=np.float64)
    values = values.reshape(-1, *values.shape[-2:])
    dy = abs(grid_step(field["y"].values, "'y'"))
    dx = abs(grid_step(field["x"].values, "'x'"))
    return values, dy, dx


def _prepare(values, detrend):
    """Remove the mean (or a least-squares plane) over the valid cells; NaN cells become 0 (the mean)."""
    ny, nx = values.shape
    valid = np.isfinite(values)
    if not valid.any():
        raise ValueError("The field is NaN everywhere; there is no spectrum to compute.")
    if detrend:
        yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
        design = np.column_stack([np.ones(valid.sum()), xx[valid], yy[valid]])
        coef = np.linalg.lstsq(design, values[valid], rcond=None)[0]
        residual = values - (coef[0] + coef[1] * xx + coef[2] * yy)
    else:
        residual = values - values[valid].mean()
    return np.where(valid, residual, 0.0)


def radial_power_spectrum(field, detrend: bool = True, window: bool = True):
    """Radially averaged power spectral density of a 2-D field on a regular metric grid.

    Parameters
    ----------
    field : xarray.DataArray
        Dims ``(y, x)`` (or ``(time, y, x)``: the spectra of all time steps are averaged),
        regular coordinates in metres.
    detrend : bool
        Remove a least-squares plane first (otherwise only the mean).
    window : bool
        Taper with a 2-D Hann window (reduces leakage from the edges).

    Returns
    -------
    wavenumber : numpy.ndarray
        Centres of the annuli, cycles per metre, from ``dk`` to the Nyquist wavenumber of the coarser axis.
    power : numpy.ndarray
        Mean power spectral density in each annulus (field units² · m²).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = np.arange(128) * 1000.0 + 500.0
    >>> wave = np.sin(2 * np.pi * x / 16_000.0)                 # 16 km wavelength along x
    >>> field = xr.DataArray(np.tile(wave, (128, 1)), dims=("y", "x"), coords={"y": x[::-1], "x": x})
    >>> k, power = radial_power_spectrum(field)
    >>> float(1 / k[np.argmax(power)])
    16000.0
    """
    stack, dy, dx = _field_values(field)
    ny, nx = stack.shape[-2:]
    taper = np.outer(np.hanning(ny), np.hanning(nx)) if window else np.ones((ny, nx))
    norm = dx * dy / (nx * ny) / np.mean(taper**2)
    kx = np.fft.fftfreq(nx, d=dx)
    ky = np.fft.fftfreq(ny, d=dy)
    k = np.hypot(*np.meshgrid(ky, kx, indexing="ij"))
    dk = max(1.0 / (nx * dx), 1.0 / (ny * dy))
    n_bins = int(np.floor(min(0.5 / dx, 0.5 / dy) / dk + 1e-9))
    if n_bins < 1:
        raise ValueError(
            f"The field ({ny} x {nx} cells) is too small for a spectrum; it needs at least 2 x 2."
        )
    bins = np.round(k / dk).astype(np.int64)
    use = (bins >= 1) & (bins <= n_bins)
    power = np.zeros(n_bins)
    for values in stack:
        spectrum = np.abs(np.fft.fft2(_prepare(values, detrend) * taper)) ** 2 * norm
        power += np.bincount(bins[use], weights=spectrum[use], minlength=n_bins + 1)[1:]
    counts = np.bincount(bins[use], minlength=n_bins + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        power = power / len(stack) / counts
    wavenumber = np.arange(1, n_bins + 1) * dk
    keep = counts > 0
    return wavenumber[keep], power[keep]


def _ratio_on(k_field, p_field, k_ref, p_ref):
    """Ratio of the field's power to the reference's, on the field's wavenumbers inside the reference's range."""
    inside = (k_field >= k_ref[0] * (1 - 1e-9)) & (k_field <= k_ref[-1] * (1 + 1e-9))
    ref = np.exp(np.interp(np.log(k_field[inside]), np.log(k_ref), np.log(p_ref)))
    return k_field[inside], p_field[inside] / ref


def effective_resolution(
    field, reference, fraction: float = 0.5, detrend: bool = True, window: bool = True
) -> float:
    """Shortest wavelength (m) down to which ``field`` keeps at least ``fraction`` of ``reference``'s power.

    With the power ratio ``P_field(k) / P_reference(k)``, the effective
    resolution is the wavelength ``1 / k`` from which on the ratio stays below
    ``fraction`` at every shorter wavelength (the start of the last run of
    annuli below ``fraction``, interpolated between the two bracketing annuli
    in log wavenumber). Looking for the *last* crossing rather than the first
    makes the estimate robust to the few, noisy annuli at the longest
    wavelengths, which also carry what detrending removed. If the ratio ends
    above ``fraction``, the field keeps (or exceeds) the reference's power down
    to the grid scale and the Nyquist wavelength of the compared range is
    returned; a ratio well above 1 there is invented detail, which
    :func:`spectrum_comparison` shows. The reference is usually the truth (or an
    independent fine-scale product); the two grids need not be the same, the
    reference spectrum is interpolated (log-log) onto the field's wavenumbers.

    Parameters
    ----------
    field, reference : xarray.DataArray
        2-D (or time-stacked) fields on regular metric grids.
    fraction : float, default 0.5
        Share of the reference's power that counts as resolved.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from scipy.ndimage import gaussian_filter
    >>> rng = np.random.default_rng(0)
    >>> c = np.arange(256) * 1000.0
    >>> noise = xr.DataArray(rng.normal(size=(256, 256)), dims=("y", "x"), coords={"y": c, "x": c})
    >>> smooth = noise.copy(data=gaussian_filter(noise.values, 3.0, mode="wrap"))
    >>> round(effective_resolution(smooth, noise) / 1000)       # analytic: 2 pi * 3 km / sqrt(ln 2) = 22.6 km
    23
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}.")
    k_f, p_f = radial_power_spectrum(field, detrend=detrend, window=window)
    k_r, p_r = radial_power_spectrum(reference, detrend=detrend, window=window)
    k, ratio = _ratio_on(k_f, p_f, k_r, p_r)
    if k.size == 0:
        raise ValueError("The field and the reference share no wavenumbers; are they on the same region?")
    above = np.flatnonzero(ratio >= fraction)
    if above.size and above[-1] == k.size - 1:
        return float(1.0 / k[-1])
    i = above[-1] + 1 if above.size else 0
    if i == 0:
        return float(1.0 / k[0])
    # Interpolate the crossing in log k between annuli i - 1 (above) and i (below).
    r0, r1 = np.log(ratio[i - 1]), np.log(max(ratio[i], 1e-300))
    t = (r0 - np.log(fraction)) / (r0 - r1)
    k_cross = np.exp(np.log(k[i - 1]) + t * (np.log(k[i]) - np.log(k[i - 1])))
    return float(1.0 / k_cross)


def spectrum_comparison(
    fields: dict, reference=None, detrend: bool = True, window: bool = True
) -> pd.DataFrame:
    """Spectra of several fields in one tidy table, for plotting (e.g. with ``downscale.plot.plot_spectra``).

    Parameters
    ----------
    fields : dict
        Label -> DataArray, e.g. ``{"coarse": coarse, "downscaled": fine, "truth": truth}``.
    reference : str, optional
        Label of the field to divide by: adds a ``ratio`` column (the reference spectrum
        interpolated onto each field's wavenumbers; NaN outside its range).

    Returns
    -------
    pandas.DataFrame
        Columns ``field``, ``wavenumber`` (cycles/m), ``wavelength`` (m), ``power`` (and ``ratio``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> c = np.arange(32) * 1000.0
    >>> a = xr.DataArray(np.random.default_rng(0).normal(size=(32, 32)), dims=("y", "x"), coords={"y": c, "x": c})
    >>> table = spectrum_comparison({"a": a, "double": 2 * a}, reference="a")
    >>> sorted(table.columns), table.loc[table.field == "double", "ratio"].round(6).unique().tolist()
    (['field', 'power', 'ratio', 'wavelength', 'wavenumber'], [4.0])
    """
    if reference is not None and reference not in fields:
        raise ValueError(f"reference={reference!r} is not one of the fields {list(fields)}.")
    spectra = {
        label: radial_power_spectrum(da, detrend=detrend, window=window) for label, da in fields.items()
    }
    frames = []
    for label, (k, power) in spectra.items():
        frame = pd.DataFrame({"field": label, "wavenumber": k, "wavelength": 1.0 / k, "power": power})
        if reference is not None:
            k_r, p_r = spectra[reference]
            ratio = np.full(k.size, np.nan)
            inside = (k >= k_r[0] * (1 - 1e-9)) & (k <= k_r[-1] * (1 + 1e-9))
            ratio[inside] = _ratio_on(k, power, k_r, p_r)[1]
            frame["ratio"] = ratio
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
