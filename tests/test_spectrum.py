"""Tests for downscale.validation.spectrum: analytic spectra and effective resolution of smoothed noise."""

import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter

import downscale as ds
from downscale.validation.spectrum import effective_resolution, radial_power_spectrum, spectrum_comparison

DX = 1000.0


def _field(values, dx=DX, crs="EPSG:32632"):
    ny, nx = values.shape[-2:]
    grid = ds.grid.make_grid((ny, nx), dx, crs=crs)
    dims = ("y", "x") if values.ndim == 2 else ("time", "y", "x")
    return ds.grid.set_crs(xr.DataArray(values, dims=dims, coords={"y": grid.y, "x": grid.x}), crs)


def _noise(n=256, seed=0):
    return np.random.default_rng(seed).normal(size=(n, n))


@pytest.mark.parametrize(
    ("wavelength", "direction"), [(16_000.0, "x"), (32_000.0, "y"), (8_000.0, "diagonal")]
)
def test_sinusoid_peaks_at_its_wavenumber(wavelength, direction):
    c = np.arange(128) * DX
    yy, xx = np.meshgrid(c, c, indexing="ij")
    phase = {"x": xx, "y": yy, "diagonal": (xx + yy) / np.sqrt(2)}[direction]
    k, power = radial_power_spectrum(_field(np.sin(2 * np.pi * phase / wavelength)))
    peak = k[np.argmax(power)]
    dk = 1 / (128 * DX)
    assert abs(peak - 1 / wavelength) <= dk * 0.51


def test_white_noise_is_flat_at_variance_times_cell_area():
    sigma = 2.0
    k, power = radial_power_spectrum(_field(sigma * _noise(), dx=500.0))
    expected = sigma**2 * 500.0 * 500.0
    assert np.mean(power) == pytest.approx(expected, rel=0.05)
    low, high = power[: len(power) // 2].mean(), power[len(power) // 2 :].mean()
    assert low / high == pytest.approx(1.0, abs=0.1)
    assert k[0] == pytest.approx(1 / (256 * 500.0))
    assert k[-1] == pytest.approx(1 / (2 * 500.0))


def test_plane_trend_and_nan_cells_barely_change_the_spectrum():
    noise = _noise(128)
    c = np.arange(128)
    plane = 0.5 * c[None, :] + 0.2 * c[:, None]
    _, clean = radial_power_spectrum(_field(noise))
    _, trended = radial_power_spectrum(_field(noise + plane))
    assert trended == pytest.approx(clean, rel=1e-6)
    holes = noise.copy()
    holes[60:64, 60:64] = np.nan
    _, with_holes = radial_power_spectrum(_field(holes))
    assert np.all(np.isfinite(with_holes))
    assert np.mean(with_holes) == pytest.approx(np.mean(clean), rel=0.05)


def test_time_stack_averages_the_spectra():
    a, b = _noise(64, 1), 3 * _noise(64, 2)
    _, pa = radial_power_spectrum(_field(a))
    _, pb = radial_power_spectrum(_field(b))
    _, stacked = radial_power_spectrum(_field(np.stack([a, b])))
    assert stacked == pytest.approx((pa + pb) / 2)


@pytest.mark.parametrize("sigma_cells", [2.0, 3.0, 5.0])
def test_effective_resolution_of_gaussian_smoothing_is_analytic(sigma_cells):
    """Gaussian smoothing with sd s keeps exp(-4 pi^2 s^2 k^2) of the power: half of it at k = sqrt(ln 2) / (2 pi s)."""
    noise = _field(_noise())
    smooth = noise.copy(data=gaussian_filter(noise.values, sigma_cells, mode="wrap"))
    expected = 2 * np.pi * sigma_cells * DX / np.sqrt(np.log(2))
    assert effective_resolution(smooth, noise) == pytest.approx(expected, rel=0.05)
    # asking for more of the power means a longer wavelength
    strict, loose = (
        effective_resolution(smooth, noise, fraction=0.8),
        effective_resolution(smooth, noise, 0.2),
    )
    assert strict > effective_resolution(smooth, noise) > loose
    expected_20 = 2 * np.pi * sigma_cells * DX / np.sqrt(np.log(1 / 0.2))
    assert loose == pytest.approx(expected_20, rel=0.05)


def test_effective_resolution_of_a_faithful_field_is_the_grid_limit():
    noise = _field(_noise(64))
    assert effective_resolution(noise, noise) == pytest.approx(2 * DX)


def test_upsampled_coarse_field_resolves_about_the_coarse_cell():
    truth = _field(gaussian_filter(_noise(), 1.0, mode="wrap"))
    coarse = ds.grid.block_mean(truth, 8)
    upsampled = ds.grid.upsample(coarse, 8, "bilinear")
    resolution = effective_resolution(upsampled, truth)
    assert 8 * DX < resolution < 40 * DX


def test_spectrum_comparison_shows_invented_detail():
    truth = _field(gaussian_filter(_noise(128), 2.0, mode="wrap"))
    coarse = ds.grid.block_mean(truth, 8)
    rng = np.random.default_rng(9)
    hallucinated = truth + 0.3 * rng.normal(size=truth.shape)  # fine-scale detail the truth does not have
    table = spectrum_comparison(
        {"truth": truth, "coarse": coarse, "downscaled": hallucinated}, reference="truth"
    )
    assert set(table["field"]) == {"truth", "coarse", "downscaled"}
    assert np.allclose(table["wavelength"], 1 / table["wavenumber"])
    assert np.allclose(table.loc[table.field == "truth", "ratio"], 1.0)
    down = table[table.field == "downscaled"]
    assert down["ratio"].iloc[-10:].min() > 10  # far more power than the truth at the shortest wavelengths
    # at the long wavelengths it matches the truth (median over the first quarter of the annuli)
    assert 0.8 < down["ratio"].iloc[: len(down) // 4].median() < 1.5
    # the coarse spectrum stops at its own Nyquist wavelength, 16 km
    assert table.loc[table.field == "coarse", "wavelength"].min() == pytest.approx(16_000.0)
    with pytest.raises(ValueError, match="reference='truth2' is not one of the fields"):
        spectrum_comparison({"truth": truth}, reference="truth2")


def test_bad_input():
    geographic = ds.grid.set_crs(
        xr.DataArray(
            np.zeros((4, 4)), dims=("y", "x"), coords={"y": [3.5, 2.5, 1.5, 0.5], "x": [0.5, 1.5, 2.5, 3.5]}
        ),
        "EPSG:4326",
    )
    with pytest.raises(
        ValueError, match="geographic \\(lat/lon\\) grid; spectra need regular coordinates in metres"
    ):
        radial_power_spectrum(geographic)
    with pytest.raises(ValueError, match="NaN everywhere"):
        radial_power_spectrum(_field(np.full((8, 8), np.nan)))
    with pytest.raises(ValueError, match="fraction must be between 0 and 1"):
        effective_resolution(_field(_noise(8)), _field(_noise(8)), fraction=50)
