"""Fine-grid covariates for downscaling: terrain (DEM), location, vegetation (NDVI), and their coarse aggregates.

Each builder takes xarray grids and returns named variables with ``units`` and
``long_name`` on the fine grid; :func:`build` stacks them into one Dataset and
:func:`aggregate` brings that Dataset to the coarse grid with the same block
mean that defines coherence everywhere else (:func:`downscale.grid.block_mean`).
"""

from . import dem, location, ndvi
from .build import aggregate, build
from .dem import dem_features
from .location import distance_to_coast, location_features
from .ndvi import fill_gaps, fractional_vegetation_cover, ndvi_features, ndvi_from_reflectance

__all__ = [
    "aggregate",
    "build",
    "dem",
    "dem_features",
    "distance_to_coast",
    "fill_gaps",
    "fractional_vegetation_cover",
    "location",
    "location_features",
    "ndvi",
    "ndvi_features",
    "ndvi_from_reflectance",
]
