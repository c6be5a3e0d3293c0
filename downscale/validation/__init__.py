"""Validation when fine-scale truth is sparse: metrics, spatial cross-validation splitters, stations, AOA, spectra.

- :mod:`~downscale.validation.metrics`: RMSE, MAE, bias, r, ubRMSE, KGE, NSE, GDOWN, bootstrap intervals.
- :mod:`~downscale.validation.splitters`: spatial block, buffered leave-one-out and kNNDM folds
  (scikit-learn compatible).
- :mod:`~downscale.validation.stations`: read station files, extract predictions at points, score them.
- :mod:`~downscale.validation.aoa`: dissimilarity index and area of applicability.
- :mod:`~downscale.validation.spectrum`: radially averaged power spectra and effective resolution.
"""

from . import aoa, metrics, spectrum, splitters, stations  # noqa: F401
from .aoa import area_of_applicability, dissimilarity_index  # noqa: F401
from .crossval import CrossValidationResult, cross_validate  # noqa: F401
from .metrics import bias, bootstrap_ci, gdown, kge, mae, nse, pearson_r, rmse, ubrmse  # noqa: F401
from .spectrum import effective_resolution, radial_power_spectrum, spectrum_comparison  # noqa: F401
from .splitters import BufferedLeaveOneOut, KNNDMKFold, SpatialBlockKFold  # noqa: F401
from .stations import (  # noqa: F401
    calibrate_std,
    extract_at_points,
    match_times,
    read_stations,
    station_scores,
)
from .wald import WaldResult, wald_score  # noqa: F401

# Later modules (cross_validate, wald) are added with one import line each above,
# e.g. `from .crossval import cross_validate` with the same F401 marker;
# __all__ follows whatever is imported here.
__all__ = sorted(name for name in dir() if not name.startswith("_"))
