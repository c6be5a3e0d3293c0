"""downscale: geostatistical downscaling of geophysical fields (coarse satellite and model grids to 250 m - 1 km).

The public API::

    import downscale as ds

    scene = ds.datasets.synthetic_scene("lst", seed=0)
    X = ds.covariates.build(dem=scene.dem, ndvi=scene.ndvi, location=True)
    model = ds.Downscaler().fit(scene.coarse, X)
    fine, std = model.predict(X, return_std=True)

Submodules are imported on first use, so ``import downscale`` stays fast and
optional dependencies (PyTorch for the UNet) are only needed by what uses them.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("downscale")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = {
    "align",
    "covariates",
    "datasets",
    "downscaler",
    "explain",
    "grid",
    "io",
    "kriging",
    "models",
    "plot",
    "run",
    "validation",
}
_ATTRIBUTES = {"Downscaler": "downscaler"}

__all__ = ["__version__", "Downscaler", *sorted(_SUBMODULES)]


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        return getattr(import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module 'downscale' has no attribute {name!r}")


def __dir__():
    return __all__
