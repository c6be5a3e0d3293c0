"""Residual kriging: variograms of coarse fields and fast area-to-point kriging (ATPK) on regular grids.

>>> from downscale.kriging import ATPK, VariogramModel
>>> ATPK(variogram=VariogramModel("exponential", sill=1.0, range=50_000.0)).neighbours
5
"""

from .atpk import ATPK
from .variogram import (
    EmpiricalVariogram,
    VariogramFitWarning,
    VariogramModel,
    deconvolve_variogram,
    empirical_variogram,
    fit_variogram,
    regularize_variogram,
)

__all__ = [
    "ATPK",
    "EmpiricalVariogram",
    "VariogramFitWarning",
    "VariogramModel",
    "deconvolve_variogram",
    "empirical_variogram",
    "fit_variogram",
    "regularize_variogram",
]
