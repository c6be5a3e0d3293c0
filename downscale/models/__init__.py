"""Models: pixel-level trend regressors, target transforms, and the optional UNet (PyTorch).

``UNetDownscaler`` is imported on first access only, so ``import downscale.models``
works without PyTorch installed.
"""

from importlib import import_module

from .transforms import (
    IdentityTransform,
    Log1pTransform,
    LogitTransform,
    coherent_correction,
    make_transform,
)
from .trend import TREND_NAMES, ClipToRange, DropCollinear, LightGBMTrend, make_trend

__all__ = [
    "TREND_NAMES",
    "ClipToRange",
    "DropCollinear",
    "IdentityTransform",
    "LightGBMTrend",
    "Log1pTransform",
    "LogitTransform",
    "UNetDownscaler",
    "coherent_correction",
    "make_transform",
    "make_trend",
]

_LAZY = {"UNetDownscaler": "unet", "unet": None}


def __getattr__(name):
    if name in _LAZY:
        module = import_module(".unet", __name__)
        return module if _LAZY[name] is None else getattr(module, name)
    raise AttributeError(f"module 'downscale.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
