"""Synthetic scenes with known fine-scale truth, for tests, tutorials and the demo.

Each scene is built from a fractal DEM on a projected 1 km grid (UTM 32N,
north-up) and physically motivated rules for the variable; the coarse field
is the exact block mean of the fine truth (optionally with sensor noise), so
every downscaling method can be scored against the truth it tries to recover.
Nothing is downloaded: scenes are generated from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from . import grid as grid_module

__all__ = ["Scene", "VARIABLES", "synthetic_scene"]

#: CF metadata and physical bounds of the variables the package knows.
VARIABLES = {
    "lst": {
        "standard_name": "surface_temperature",
        "long_name": "land surface temperature",
        "units": "K",
        "bounds": (None, None),
        "land_only": True,
    },
    "precipitation": {
        "standard_name": "lwe_thickness_of_precipitation_amount",
        "long_name": "daily precipitation",
        "units": "mm",
        "bounds": (0.0, None),
        "land_only": False,
    },
    "no2": {
        "standard_name": "troposphere_mole_content_of_nitrogen_dioxide",
        "long_name": "tropospheric NO2 column",
        "units": "umol m-2",
        "bounds": (0.0, None),
        "land_only": False,
    },
    "soil_moisture": {
        "standard_name": "volume_fraction_of_condensed_water_in_soil",
        "long_name": "surface soil moisture",
        "units": "m3 m-3",
        "bounds": (0.0, 0.45),
        "land_only": True,
    },
}

POROSITY = 0.45
_ALIASES = {"precip": "precipitation", "pr": "precipitation", "sm": "soil_moisture", "temperature": "lst"}


@dataclass
class Scene:
    """A synthetic downscaling problem with its known answer.

    Attributes
    ----------
    variable : str
        ``"lst"``, ``"precipitation"``, ``"no2"`` or ``"soil_moisture"``.
    coarse : xarray.DataArray
        The coarse input, ``(y, x)`` or ``(time, y, x)``: block mean of ``truth`` (plus sensor noise).
    truth : xarray.DataArray
        The fine field the coarse one was made from.
    dem : xarray.DataArray
        Elevation (m) on the fine grid; 0 over the sea.
    ndvi : xarray.DataArray
        NDVI on the fine grid (one field; vegetation changes slowly).
    mask : xarray.DataArray
        True on land.
    stations : geopandas.GeoDataFrame
        Point measurements: ``station_id``, ``time`` (multi-time scenes), ``value``, ``noise_std``
        (the standard deviation of the measurement noise added to the truth), point geometry.
    factor : int
        Fine cells per coarse cell along each axis.
    bounds : (float or None, float or None)
        Physical range of the variable.
    extra : dict of str to xarray.DataArray
        Further fine covariates a user of this variable would have, ready for
        ``covariates.build(extra=scene.extra)``: for NO2 an emission inventory
        (``"emissions"``, with errors), for soil moisture a 1 km land surface
        temperature (``"lst"``, with a time axis like the truth's); see
        :func:`synthetic_scene`. Empty for LST and precipitation.
    attrs : dict
        ``seed`` and ``truth_std`` (the standard deviation of the truth).
    """

    variable: str
    coarse: xr.DataArray
    truth: xr.DataArray
    dem: xr.DataArray
    ndvi: xr.DataArray
    mask: xr.DataArray
    stations: object
    factor: int
    bounds: tuple = (None, None)
    extra: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def __repr__(self):
        shape = dict(self.truth.sizes)
        return (
            f"<Scene {self.variable!r}: fine {shape}, factor {self.factor}, "
            f"coarse {dict(self.coarse.sizes)}, {len(self.stations)} station records"
            + (f", extra covariates {', '.join(self.extra)}" if self.extra else "")
            + ">"
        )


def _gaussian_field(shape, length_cells, rng):
    """Unit-variance Gaussian random field with a Gaussian correlation of ``length_cells``."""
    noise = rng.standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, sigma=length_cells, mode="wrap")
    return (smooth - smooth.mean()) / smooth.std()


def _fractal_field(shape, beta, rng):
    """Unit-variance field with a power spectrum ~ k**-beta (beta about 3 looks like real relief)."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf
    amplitude = k ** (-beta / 2)
    phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
    spectrum = amplitude * rng.standard_normal(amplitude.shape) * np.exp(1j * phase)
    field = np.fft.irfft2(spectrum, s=shape)
    return (field - field.mean()) / field.std()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _standardise(values, valid=None):
    valid = np.isfinite(values) if valid is None else valid
    return (values - values[valid].mean()) / values[valid].std()


def _terrain(shape, cell_size, rng):
    """Elevation (m, 0 at sea), land mask, and the derived slope (fraction) and southness."""
    ny, nx = shape
    relief = _fractal_field(shape, beta=3.2, rng=rng)
    yy, xx = np.mgrid[0:ny, 0:nx] / max(ny, nx)
    # A mountain range across the scene and a coast to the west, both at random angles.
    angle = rng.uniform(-0.4, 0.4)
    ridge = np.exp(-(((yy - 0.5) * np.cos(angle) + (xx - 0.6) * np.sin(angle)) ** 2) / 0.06)
    coast = np.clip((xx - 0.12 - 0.05 * np.sin(6 * yy + rng.uniform(0, 6))) * 8, -1, 1)
    elevation = 350 * relief + 1600 * ridge * np.clip((xx - 0.1) * 4, 0, 1) + 900 * coast + 500
    land = elevation > 0
    land = ndimage.binary_opening(land, iterations=2) | (xx > 0.5)
    elevation = np.where(land, np.maximum(elevation, 1.0), 0.0)
    gy, gx = np.gradient(elevation, cell_size)
    slope = np.hypot(gy, gx)
    # Rows run north to south (north-up grid), so d(elevation)/d(row) > 0 means it rises southward.
    southness = np.where(slope > 1e-6, gy / np.maximum(slope, 1e-6), 0.0)
    return elevation, land, slope, southness


def _station_table(truth, mask, n_stations, noise_std, rng, bounds, crs):
    """Sparse point measurements: the truth at random land pixels plus point-scale noise."""
    import geopandas as gpd

    land_rows, land_cols = np.nonzero(mask)
    if "time" in truth.dims:
        first = truth.isel(time=0).values
    else:
        first = truth.values
    valid = np.isfinite(first[land_rows, land_cols])
    land_rows, land_cols = land_rows[valid], land_cols[valid]
    pick = rng.choice(land_rows.size, size=min(n_stations, land_rows.size), replace=False)
    rows, cols = land_rows[pick], land_cols[pick]
    # Stations sit anywhere inside their pixel, not at its centre.
    dx = float(truth.x[1] - truth.x[0])
    dy = float(truth.y[1] - truth.y[0])
    x = truth.x.values[cols] + rng.uniform(-0.5, 0.5, cols.size) * dx
    y = truth.y.values[rows] + rng.uniform(-0.5, 0.5, rows.size) * dy
    station_ids = [f"S{i:03d}" for i in range(rows.size)]
    records = []
    times = truth["time"].values if "time" in truth.dims else [None]
    for t_index, time in enumerate(times):
        values = (truth.isel(time=t_index).values if time is not None else truth.values)[rows, cols]
        spread = np.broadcast_to(np.asarray(noise_std(values), dtype=np.float64), values.shape)
        observed = values + spread * rng.standard_normal(values.size)
        low, high = bounds
        if low is not None:
            observed = np.maximum(observed, low)
        if high is not None:
            observed = np.minimum(observed, high)
        frame = pd.DataFrame(
            {"station_id": station_ids, "x": x, "y": y, "value": observed, "noise_std": spread}
        )
        if time is not None:
            frame.insert(1, "time", time)
        records.append(frame)
    table = pd.concat(records, ignore_index=True)
    return gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(table["x"], table["y"]), crs=crs)


#: Errors of the NO2 scene's emission inventory: log-normal spread of each source's strength, the
#: Gaussian radius (km) over which the inventory spreads a source, and its spurious minor entries.
INVENTORY_STRENGTH_ERROR = 0.3
INVENTORY_SPREAD_KM = 3.0
INVENTORY_SPURIOUS_SOURCES = 15


def _emission_inventory(sources, strengths, lowland, shape, length, seed):
    """An emission inventory of the NO2 scene's emitters, with the errors a real one has.

    Each emitter's strength is off by a log-normal factor (``INVENTORY_STRENGTH_ERROR``) and
    spread over ``INVENTORY_SPREAD_KM`` (an inventory maps a city or a plant site, not a
    stack); ``INVENTORY_SPURIOUS_SOURCES`` minor entries (5-40, the emitters are 100-300), at
    random pixels of the ``lowland`` the emitters were drawn from, have no counterpart in the
    truth. The inventory is static: it knows nothing of the day's wind, so it places the hot
    spots but not their plumes. Its random numbers are a stream of their own, so the scene's
    truth and stations do not depend on it.
    """
    rng = np.random.default_rng([seed, 1])
    point = np.zeros(shape)
    for (row, col), strength in zip(sources, strengths, strict=True):
        point[row, col] += strength * np.exp(INVENTORY_STRENGTH_ERROR * rng.standard_normal())
    for row, col in lowland[rng.choice(len(lowland), size=INVENTORY_SPURIOUS_SOURCES)]:
        point[row, col] += rng.uniform(5, 40)
    return ndimage.gaussian_filter(point, INVENTORY_SPREAD_KM * length)


#: The soil-moisture scene's 1 km land surface temperature: cooling (K) per m3 m-3 of soil moisture
#: above ``LST_REFERENCE_MOISTURE`` on bare soil, and the pixel noise (K) of a satellite retrieval.
LST_SOIL_COOLING = 40.0
LST_REFERENCE_MOISTURE = 0.25
LST_NOISE = 1.0


def _surface_temperature(moisture, z_km, ndvi, length, rng):
    """A day's 1 km land surface temperature (K) over soil moisture ``moisture``, as DISPATCH reads it.

    Wet soil evaporates and stays cool: the bare fraction of a pixel (one minus the fractional
    vegetation cover, ``((NDVI - 0.05) / 0.85) ** 2``, Carlson and Ripley 1997) cools by
    ``LST_SOIL_COOLING`` K per m3 m-3 above ``LST_REFERENCE_MOISTURE``; the canopy is 5 K cooler
    than bare soil; the air cools with the 6.5 K/km lapse rate. A smooth 1.5 K weather anomaly
    (30 km) and ``LST_NOISE`` K of retrieval noise per pixel blur the signal. ``rng`` is a
    stream of its own, so the scene's truth and stations do not depend on it.
    """
    cover = np.clip((ndvi - 0.05) / 0.85, 0.0, 1.0) ** 2
    return (
        305.0
        - 6.5 * z_km
        - LST_SOIL_COOLING * (1.0 - cover) * (moisture - LST_REFERENCE_MOISTURE)
        - 5.0 * cover
        + 1.5 * _gaussian_field(moisture.shape, 30 * length, rng)
        + LST_NOISE * rng.standard_normal(moisture.shape)
    )


def synthetic_scene(
    variable: str = "lst",
    seed: int = 0,
    n_times: int = 1,
    shape: tuple[int, int] = (400, 400),
    factor: int = 25,
    cell_size: float = 1000.0,
    coarse_noise: float = 0.0,
    n_stations: int = 40,
    crs: str = "EPSG:32632",
) -> Scene:
    """Make a synthetic scene with known fine truth for one of the four variables.

    The physics, per variable (elevation ``z`` in km, all fields on a 1 km grid):

    - ``"lst"``: land surface temperature (K) =
      300 - 6.5 K/km * z (the environmental lapse rate) - 8 K * (NDVI - 0.4)
      (evaporative cooling by vegetation) + 2.5 K * southness (sun-facing
      slopes are warmer) + a smooth 1.5 K weather anomaly and 0.3 K pixel noise.
      NaN over the sea.
    - ``"precipitation"``: daily totals (mm) from a latent Gaussian storm field
      with 60 km correlation; about 35 % of the area is dry, and the wet part
      has a skewed (log-normal) intensity enhanced by 60 % per km of
      elevation (orographic lift) and on south-west facing slopes. >= 0.
    - ``"no2"``: tropospheric column (umol m-2) = 20 background + 4-6
      emission hot spots in the lowlands with Gaussian plumes stretched
      downwind, attenuated with altitude as exp(-z / 1.5 km), times a small
      log-normal noise. >= 0. The emitters stay put over the days; the wind
      turns every day. ``scene.extra["emissions"]`` is an emission inventory
      of them, with errors (:data:`INVENTORY_STRENGTH_ERROR` and the constants
      after it): the covariate a NO2 downscaling would use.
    - ``"soil_moisture"``: volumetric (m3 m-3) = porosity 0.45 x a sigmoid of
      a topographic wetness index (wet valley bottoms, dry ridges and steep
      slopes), vegetation and a smooth rain anomaly; bounded to
      [0, porosity]. NaN over the sea. ``scene.extra["lst"]`` is the day's
      1 km land surface temperature (K), cooler where the bare soil is wet
      (:data:`LST_SOIL_COOLING`, with weather and retrieval noise): the
      covariate of DISPATCH-style soil-moisture downscaling (Merlin et al. 2012).

    The DEM has a fractal spectrum (power ~ k^-3.2) on top of a mountain range,
    with a coast along the west side; NDVI falls above 2 km (treeline) and
    rises with moisture.

    Parameters
    ----------
    variable : {"lst", "precipitation", "no2", "soil_moisture"}
    seed : int
        Everything is a deterministic function of the seed.
    n_times : int
        Number of daily time steps; with more than one, ``coarse`` and ``truth`` get a ``time`` dim.
    shape : (int, int)
        Fine grid shape; both must be multiples of ``factor``.
    factor : int
        Fine cells per coarse cell (default 25: 25 km -> 1 km).
    cell_size : float
        Fine cell size in metres.
    coarse_noise : float
        Standard deviation of sensor noise added to the coarse field, as a
        fraction of the truth's standard deviation (bounded variables stay in range).
    n_stations : int
        Number of stations (20-80 is typical).
    crs : str
        Projected CRS of the grid.

    Returns
    -------
    Scene

    Examples
    --------
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(100, 100), factor=10)
    >>> scene.coarse.shape, scene.truth.shape
    ((10, 10), (100, 100))
    >>> diff = ds.grid.block_mean(scene.truth, 10) - scene.coarse
    >>> bool(abs(diff).max() < 1e-9)
    True

    A NO2 scene comes with the emission inventory a NO2 downscaling would use as a covariate:

    >>> no2 = ds.datasets.synthetic_scene("no2", seed=0, shape=(100, 100), factor=10)
    >>> no2
    <Scene 'no2': fine {'y': 100, 'x': 100}, factor 10, coarse {'y': 10, 'x': 10}, 40 station records, extra covariates emissions>
    >>> X = ds.covariates.build(dem=no2.dem, features=["elevation"], extra=no2.extra)
    >>> list(X.data_vars)
    ['elevation', 'emissions']
    """
    variable = _ALIASES.get(variable, variable)
    if variable not in VARIABLES:
        raise ValueError(f"Unknown variable {variable!r}; expected one of {sorted(VARIABLES)}.")
    ny, nx = (int(n) for n in shape)
    if ny % factor or nx % factor:
        raise ValueError(
            f"shape {shape} is not a whole number of {factor} x {factor} coarse blocks; "
            f"use multiples of the factor, e.g. shape=({ny // factor * factor or factor}, "
            f"{nx // factor * factor or factor})."
        )
    if n_times < 1:
        raise ValueError(f"n_times must be at least 1, got {n_times}.")
    rng = np.random.default_rng(seed)
    meta = VARIABLES[variable]
    template = grid_module.make_grid((ny, nx), cell_size, origin=(300_000.0, 5_000_000.0), crs=crs)
    length = 1000.0 / cell_size  # cells per km

    elevation, land, slope, southness = _terrain((ny, nx), cell_size, rng)
    z_km = elevation / 1000.0
    moisture = _gaussian_field((ny, nx), 20 * length, rng)
    ndvi = 0.45 + 0.15 * moisture - 0.25 * _sigmoid((z_km - 2.0) * 6)
    ndvi = ndvi + 0.05 * _gaussian_field((ny, nx), 2 * length, rng) + 0.02 * rng.standard_normal((ny, nx))
    ndvi = np.where(land, np.clip(ndvi, 0.05, 0.9), -0.1)

    # Topographic wetness proxy: valley bottoms (below their surroundings) and gentle slopes are wet.
    surroundings = ndimage.uniform_filter(elevation, size=int(9 * length) | 1, mode="nearest")
    wetness = ndimage.gaussian_filter(_standardise(-(elevation - surroundings)) - _standardise(slope), 1.5)

    times = pd.date_range("2024-06-01", periods=n_times, freq="D")
    fields = []
    surface_temperatures = []  # soil moisture: the day's 1 km LST, on a random stream of its own
    lst_rng = np.random.default_rng([seed, 2])
    # NO2: the emitters (rows and columns), their strengths, and the lowland pixels they are drawn from.
    sources = strengths = lowland = None
    for _ in range(n_times):
        if variable == "lst":
            anomaly = _gaussian_field((ny, nx), 30 * length, rng)
            base = 300 + rng.normal(0, 2)
            values = (
                base
                - 6.5 * z_km
                - 8.0 * (ndvi - 0.4)
                + 2.5 * southness * np.clip(slope * 5, 0, 1)
                + 1.5 * anomaly
                + 0.3 * rng.standard_normal((ny, nx))
            )
        elif variable == "precipitation":
            storm = _gaussian_field((ny, nx), 60 * length, rng)
            intensity = _gaussian_field((ny, nx), 15 * length, rng)
            wind_facing = np.clip(-southness, -1, 1)  # slopes facing the (southerly) moist flow
            wet = storm + 0.25 * z_km > np.quantile(storm, 0.35)
            amount = (
                4.0
                * np.exp(0.7 * intensity + 0.5 * storm)
                * (1 + 0.6 * z_km)
                * (1 + 0.2 * wind_facing * np.clip(slope * 5, 0, 1))
            )
            values = np.where(
                wet, amount * np.clip(storm + 0.25 * z_km - np.quantile(storm, 0.35), 0, 0.5) / 0.5, 0.0
            )
        elif variable == "no2":
            values = np.full((ny, nx), 20.0)
            yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
            wind = rng.uniform(0, 2 * np.pi)  # a new wind every day
            if sources is None:  # the emitters are drawn on the first day and stay put
                lowland = np.argwhere(land & (elevation < np.quantile(elevation[land], 0.3)))
                sources = lowland[rng.choice(len(lowland), size=rng.integers(4, 7), replace=False)]
                strengths = rng.uniform(100, 300, size=len(sources))
            for source, strength in zip(sources, strengths, strict=True):
                dy, dx = yy - source[0], xx - source[1]
                along = dx * np.cos(wind) + dy * np.sin(wind)
                across = -dx * np.sin(wind) + dy * np.cos(wind)
                width = 4 * length + 0.15 * np.clip(along, 0, None)
                plume = np.exp(-(across**2) / (2 * width**2)) * np.exp(
                    -np.clip(along, 0, None) / (40 * length)
                )
                plume *= np.exp(-(np.clip(-along, 0, None) ** 2) / (2 * (4 * length) ** 2))
                values += strength * plume * (4 * length) / width
            values = values * np.exp(-z_km / 1.5) * np.exp(0.08 * rng.standard_normal((ny, nx)))
        else:  # soil moisture
            rain = _gaussian_field((ny, nx), 40 * length, rng)
            latent = 0.8 * wetness + 2.0 * (ndvi - 0.4) + 0.7 * rain + 0.05 * rng.standard_normal((ny, nx))
            values = POROSITY * _sigmoid(latent - 0.2)
            surface_temperatures.append(_surface_temperature(values, z_km, ndvi, length, lst_rng))
        if meta["land_only"]:
            values = np.where(land, values, np.nan)
        fields.append(values)

    data = np.stack(fields) if n_times > 1 else fields[0]
    dims = ("time", "y", "x") if n_times > 1 else ("y", "x")
    coords = {"y": template["y"], "x": template["x"]}
    if n_times > 1:
        coords["time"] = times
    attrs = {k: meta[k] for k in ("standard_name", "long_name", "units")}
    low, high = meta["bounds"]
    if low is not None:
        attrs["valid_min"] = low
    if high is not None:
        attrs["valid_max"] = high
    truth = grid_module.set_crs(xr.DataArray(data, dims=dims, coords=coords, name=variable, attrs=attrs), crs)
    coarse = grid_module.block_mean(truth, factor, min_valid=0.5)
    if coarse_noise > 0:
        noisy = coarse.values + coarse_noise * float(np.nanstd(truth.values)) * rng.standard_normal(
            coarse.shape
        )
        coarse = coarse.copy(
            data=np.clip(noisy, low if low is not None else -np.inf, high if high is not None else np.inf)
        )
    coarse.attrs = dict(attrs)

    def on_grid(values, name, attrs, dims=("y", "x")):
        """A field on the fine grid (with the truth's time axis if ``dims`` has one), named, with the CRS."""
        return grid_module.set_crs(
            xr.DataArray(values, dims=dims, coords={d: coords[d] for d in dims}, name=name, attrs=attrs), crs
        )

    dem = on_grid(
        elevation,
        "elevation",
        {"standard_name": "height_above_mean_sea_level", "long_name": "elevation", "units": "m"},
    )
    ndvi_da = on_grid(ndvi, "ndvi", {"long_name": "normalized difference vegetation index", "units": "1"})
    mask = on_grid(land, "land", {"long_name": "land mask"})
    extra = {}
    if variable == "no2":
        extra["emissions"] = on_grid(
            _emission_inventory(sources, strengths, lowland, (ny, nx), length, seed),
            "emissions",
            {"long_name": "NOx emission inventory", "units": "t km-2 yr-1"},
        )
    if variable == "soil_moisture":
        lst = np.where(land, np.stack(surface_temperatures), np.nan).reshape(data.shape)
        lst_attrs = {
            "standard_name": "surface_temperature",
            "long_name": "land surface temperature",
            "units": "K",
        }
        extra["lst"] = on_grid(lst, "lst", lst_attrs, dims=dims)
    spread = float(np.nanstd(truth.values))
    noise = {
        "lst": lambda v: 0.5,
        "precipitation": lambda v: 0.05 * v,
        "no2": lambda v: 0.05 * v,
        "soil_moisture": lambda v: 0.02,
    }[variable]
    stations = _station_table(truth, land, n_stations, noise, rng, meta["bounds"], crs)
    return Scene(
        variable=variable,
        coarse=coarse,
        truth=truth,
        dem=dem,
        ndvi=ndvi_da,
        mask=mask,
        stations=stations,
        factor=int(factor),
        bounds=meta["bounds"],
        extra=extra,
        attrs={"seed": seed, "truth_std": spread},
    )
