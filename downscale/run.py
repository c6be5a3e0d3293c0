"""Operational runs: a YAML configuration, a resumable time loop, and tiled processing through dask.

``downscale run CONFIG.yaml`` reads a configuration (see :func:`load_config`),
downscales every time step of the coarse input files and writes one netCDF
file per time step.

The model
---------
``model.type: downscaler`` (the default): a :class:`~downscale.Downscaler`
with ``model.parameters`` is fitted on every time step, in tiles (below).
Without a ``trend`` parameter it is the default ``trend="auto"``: the trend is
chosen on every step by spatial cross-validation on the coarse cells, as in
``Downscaler.fit`` (the covariates' fine spread for the retention filter is
gathered tile by tile). Since nothing fitted carries over from one step to the next, its "saved
model" is its parameter set: ``model.path`` names a JSON (or YAML) file of
parameters, as written by :func:`save_model_parameters`; every run writes the
one it used to ``<outputs.directory>/model.json``.

``model.type: unet``: a :class:`~downscale.models.UNetDownscaler` with
``model.parameters`` is trained once, by the Wald protocol, on all readable
time steps of the run, saved to ``<outputs.directory>/model.pt`` and applied
to every step. A rerun of the same configuration reuses that file (a resumed
run goes on with the same network); delete it to train again.
``model.path`` names a UNet saved by ``UNetDownscaler.save`` instead (the
type is read from the ``.pt`` suffix). The UNet predicts each step on the
whole fine grid, not in tiles: its memory grows with the domain. Its ``std``
is the spread of Monte-Carlo dropout samples, and it has no ``aoa``.

The std
-------
A Downscaler's ``std`` output is calibrated by the Wald protocol on every
step (see :mod:`downscale.downscaler`), unless a ``calibration`` section names
stations: then each step's std is calibrated at that step's station values
(records within half a time step), by split conformal prediction with the
stations' own ``noise`` left out, as ``Downscaler(station_trend=False).fit(...,
stations=...)`` does: a run's stations calibrate the std but do not join the
trend (an in-memory ``Downscaler`` lets them when held-out stations say it
helps; a run would need a second pass over the tiles for that). The tiles that hold a station are computed first and kept for the
writer, so the calibration costs no second pass. A step with too few station
values for a 90 % scale (fewer than 9) falls back to the Wald protocol and
says so in ``run.log`` and in the output's ``downscale_std_calibration``
attribute. Stations that also validate the run then check the intervals
in-sample: keep some out of the calibration.

Every output records the model that made it (attribute ``downscale_model``:
the Downscaler's parameters or the digest of the UNet file); an output made by
another model counts as stale and is redone.

Why tiles
---------
The coarse field of one time step is small (100 x 100 cells is 80 kB); its
fine grid is not (2500 x 2500 pixels times a dozen covariates is 600 MB, and
a domain four times larger is 2.4 GB). Everything that lives on the fine grid
is therefore processed in tiles of ``tile x tile`` coarse cells, through dask,
and never held whole:

1. block means of the covariates and their fine spread, tile by tile
   (coarse-sized results); ``trend="auto"`` chooses on these;
2. the trend model, fitted on the coarse cells, is applied tile by tile and
   only the block means of its fine prediction are kept (the coarse residual);
3. area-to-point kriging of the coarse residual, through the kriging module's
   dask path: each tile of coarse cells is kriged with a halo of
   ``neighbours // 2`` cells, so its fine prediction is the one of the whole
   grid (:class:`downscale.kriging.ATPK`);
4. trend + residual, back-transform, coherence correction, standard deviation
   and area of applicability, tile by tile, streamed into the output file.

Tiles are aligned to coarse blocks, so every per-block operation (block
means, the coherence correction) sees whole blocks and gives exactly the
in-memory result; :func:`downscale_step` is tested against
``Downscaler.fit(...).predict(...)``. Peak memory is set by the tile size and
the number of tiles in flight, not by the domain.

Why resumable
-------------
Each output is written to a temporary file in the output directory and moved
into place (an atomic rename) only after the attribute ``downscale_complete =
1`` has been written last. A rerun opens every existing output and checks the
variables, the grid, the time and that attribute (:func:`is_complete`); it
skips complete files and redoes the others. An interruption (Ctrl-C, a
killed job) leaves at most a temporary ``.*.part`` file, which the next run
removes. A time step that fails (unreadable file, all-NaN field, a fit that
cannot be done) is reported and skipped; the others complete and the exit
code is 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import glob as glob_module
import logging
import os
import sys
import tempfile
import time as time_module
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import grid as grid_module

__all__ = [
    "ConfigError",
    "RunConfig",
    "StepResult",
    "WorkItem",
    "downscale_step",
    "is_complete",
    "load_config",
    "plan_work",
    "run",
    "run_command",
    "save_model_parameters",
]

logger = logging.getLogger(__name__)

#: Output variable names of the ``outputs.variables`` keys.
OUTPUT_VARIABLES = ("mean", "std", "aoa")
#: Global attribute written last into every finished output.
COMPLETE_ATTRIBUTE = "downscale_complete"
#: Global attribute naming the model that made an output (see :func:`is_complete`).
MODEL_ATTRIBUTE = "downscale_model"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class ConfigError(ValueError):
    """A configuration that cannot be run: the message names the key and the fix."""


# =============================================================== configuration


@dataclass
class InputsConfig:
    """Coarse input files: a glob of netCDF files, the variable, an optional time range."""

    files: str
    variable: str
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    paths: list = field(default_factory=list)


@dataclass
class CovariatesConfig:
    """Fine covariates: a DEM (GeoTIFF or netCDF), NDVI, a mask, or a ready covariate stack."""

    dem: Path | None = None
    ndvi: Path | None = None
    mask: Path | None = None
    stack: Path | None = None
    location: bool = True
    features: list | None = None
    tpi_radii: list | None = None


@dataclass
class ModelConfig:
    """The model: its ``type`` and either new ``parameters`` or the ``path`` of a saved model.

    ``type: downscaler``: a :class:`~downscale.Downscaler` fitted on every time step; ``path`` is a
    saved parameter set (JSON or YAML, see :func:`save_model_parameters`). ``type: unet``: a
    :class:`~downscale.models.UNetDownscaler` trained once on the run's series by the Wald protocol,
    or loaded from ``path`` (a file written by ``UNetDownscaler.save``).
    """

    type: str = "downscaler"
    parameters: dict = field(default_factory=dict)
    path: Path | None = None


@dataclass
class OutputsConfig:
    """Where and what to write."""

    directory: Path
    pattern: str = "{variable}_{time:%Y%m%d}.nc"
    compression: int = 4
    variables: list = field(default_factory=lambda: ["mean", "std"])
    tile: int = 32


@dataclass
class ValidationConfig:
    """Stations to score the outputs against (optional)."""

    stations: Path | None = None
    crs: str | None = None
    value_column: str = "value"


@dataclass
class CalibrationConfig:
    """Stations at which the ``std`` output is calibrated, step by step (optional; see the module notes)."""

    stations: Path | None = None
    crs: str | None = None
    value_column: str = "value"
    noise: object = None


@dataclass
class DaskConfig:
    """Where the tiles run: local threads, a LocalCluster of ``workers``, or a scheduler address.

    Measured with ``benchmarks/bench_run.py`` on 2 cores (100 x 100 -> 2500 x 2500, 10 steps): one
    thread 37.8 s, two threads 40.8 s, a LocalCluster of two in-process workers 67.8 s. The tiles' work
    holds the GIL much of the time (the trend's predict, the kriging gathers) and every tile of a
    LocalCluster goes through the distributed scheduler, so on one small machine one thread is as fast
    as any; ``workers`` and ``scheduler`` are for runs that leave the machine, where that overhead buys
    memory and cores elsewhere.
    """

    threads: int = 1
    workers: int | None = None
    processes: bool = False
    scheduler: str | None = None


@dataclass
class RunConfig:
    """A validated run configuration (all paths absolute)."""

    inputs: InputsConfig
    covariates: CovariatesConfig
    outputs: OutputsConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
    path: Path | None = None


# key -> (kind, required); kinds: str, int, bool, path, existing, glob, time, list, dict, address
_SCHEMA = {
    "inputs": {
        "files": ("glob", True),
        "variable": ("str", True),
        "start": ("time", False),
        "end": ("time", False),
    },
    "covariates": {
        "dem": ("existing", False),
        "ndvi": ("existing", False),
        "mask": ("existing", False),
        "stack": ("existing", False),
        "location": ("bool", False),
        "features": ("list", False),
        "tpi_radii": ("list", False),
    },
    "model": {"type": ("str", False), "parameters": ("dict", False), "path": ("existing", False)},
    "outputs": {
        "directory": ("path", True),
        "pattern": ("str", False),
        "compression": ("int", False),
        "variables": ("list", False),
        "tile": ("int", False),
    },
    "validation": {"stations": ("existing", False), "crs": ("str", False), "value_column": ("str", False)},
    "calibration": {
        "stations": ("existing", False),
        "crs": ("str", False),
        "value_column": ("str", False),
        "noise": ("noise", False),
    },
    "dask": {
        "threads": ("int", False),
        "workers": ("int", False),
        "processes": ("bool", False),
        "scheduler": ("str", False),
    },
}
_REQUIRED_SECTIONS = ("inputs", "covariates", "outputs")
_EXAMPLE = {
    "glob": "coarse/*.nc",
    "str": "a text value",
    "int": "4",
    "bool": "true",
    "path": "output",
    "existing": "dem.tif",
    "time": "2020-01-31",
    "list": "[mean, std]",
    "dict": "{trend: lightgbm}",
    "noise": "0.5 (a standard deviation in the variable's units) or noise_std (a column)",
}


def _closest(key, valid):
    match = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(valid)}."


def _check_keys(data, valid, where, source):
    for key in data:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key '{where}{key}'.{_closest(key, valid)}")


def _value(kind, value, key, base, source):
    def wrong(expected):
        return ConfigError(
            f"{source}: '{key}' must be {expected}, got {value!r} ({type(value).__name__}). "
            f"Example: {key.split('.')[-1]}: {_EXAMPLE[kind]}"
        )

    if value is None:
        return None
    if kind == "str":
        if not isinstance(value, str):
            raise wrong("a text value")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "list":
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise wrong("a list")
        return value
    if kind == "dict":
        if not isinstance(value, dict):
            raise wrong("a mapping of names to values")
        return value
    if kind == "noise":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise wrong("a number or a column name")
        if not isinstance(value, str) and not value >= 0:
            raise wrong("a standard deviation (>= 0)")
        return value if isinstance(value, str) else float(value)
    if kind == "time":
        try:
            return pd.Timestamp(value)
        except (ValueError, TypeError):
            raise wrong("a date") from None
    if not isinstance(value, str):
        raise wrong("a path (text)")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = base / path
    if kind == "existing" and not path.exists():
        raise ConfigError(
            f"{source}: '{key}' names {value!r}, which does not exist (looked for {path}). "
            f"Paths are relative to the configuration file; fix the path or remove the key."
        )
    return path


def load_config(path) -> RunConfig:
    """Read and validate a YAML run configuration.

    Every problem raises :class:`ConfigError` naming the key and the fix: an
    unknown key (with the closest valid one), a wrong type, a missing file, a
    glob that matches nothing. Paths are relative to the configuration file.

    Parameters
    ----------
    path : str or Path
        The YAML file.

    Returns
    -------
    RunConfig

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.nc").write_bytes(b"")
    >>> _ = (folder / "run.yaml").write_text(
    ...     "inputs: {files: '*.nc', variable: lst}\\n"
    ...     "covariates: {location: true}\\n"
    ...     "outputs: {directory: out, compresion: 4}\\n")
    >>> load_config(folder / "run.yaml")
    Traceback (most recent call last):
    ...
    downscale.run.ConfigError: ...run.yaml: unknown key 'outputs.compresion'. Did you mean 'compression'?
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"No such configuration file: {path}. Give the path of a YAML file, e.g. data/example.yaml."
        )
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with sections {', '.join(_SCHEMA)}, got {type(data).__name__}."
        )
    _check_keys(data, list(_SCHEMA), "", source)
    for section in _REQUIRED_SECTIONS:
        if section not in data:
            raise ConfigError(f"{source}: missing section '{section}'. Add it, e.g. as in data/example.yaml.")
    base = path.resolve().parent
    parsed = {}
    for section, schema in _SCHEMA.items():
        raw = data.get(section) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: '{section}' must be a mapping of keys to values, got {raw!r}.")
        _check_keys(raw, list(schema), f"{section}.", source)
        values = {}
        for key, (kind, required) in schema.items():
            if key not in raw or raw[key] is None:
                if required:
                    raise ConfigError(
                        f"{source}: missing key '{section}.{key}'. Add it, e.g. {key}: {_EXAMPLE[kind]}"
                    )
                continue
            values[key] = _value(kind, raw[key], f"{section}.{key}", base, source)
        parsed[section] = values

    inputs = InputsConfig(**parsed["inputs"])
    pattern = str(inputs.files)
    paths = sorted(glob_module.glob(pattern))
    if not paths:
        raise ConfigError(
            f"{source}: 'inputs.files' matches no file ({pattern}). Paths are relative to the configuration "
            f"file; check the folder and the pattern."
        )
    inputs.paths = [Path(p) for p in paths]
    inputs.files = pattern
    if inputs.start is not None and inputs.end is not None and inputs.end < inputs.start:
        raise ConfigError(f"{source}: 'inputs.end' ({inputs.end}) is before 'inputs.start' ({inputs.start}).")

    covariates = CovariatesConfig(**parsed["covariates"])
    if covariates.dem is None and covariates.stack is None and covariates.ndvi is None:
        raise ConfigError(
            f"{source}: 'covariates' needs a 'dem' (GeoTIFF or netCDF), an 'ndvi' or a ready 'stack' "
            f"(netCDF of fine covariates); they define the fine grid."
        )
    model = _check_model(ModelConfig(**parsed["model"]), "type" in parsed["model"], source)

    outputs = OutputsConfig(**parsed["outputs"])
    unknown = [v for v in outputs.variables if v not in OUTPUT_VARIABLES]
    if unknown or "mean" not in outputs.variables:
        raise ConfigError(
            f"{source}: 'outputs.variables' must list 'mean' and optionally 'std' and 'aoa', got "
            f"{outputs.variables}." + (_closest(unknown[0], OUTPUT_VARIABLES) if unknown else "")
        )
    if model.type == "unet" and "aoa" in outputs.variables:
        raise ConfigError(
            f"{source}: 'outputs.variables' lists 'aoa', the area of applicability of a Downscaler's trend; "
            f"a UNet model has none. Remove 'aoa' from 'outputs.variables' or use model.type: downscaler."
        )
    if model.type == "unet" and "std" in outputs.variables and _unet_dropout(model) == 0:
        raise ConfigError(
            f"{source}: 'outputs.variables' lists 'std', which a UNet estimates by Monte-Carlo dropout, but "
            f"its dropout is 0. Set model.parameters.dropout > 0 (e.g. 0.1) or remove 'std'."
        )
    if not 0 <= outputs.compression <= 9:
        raise ConfigError(
            f"{source}: 'outputs.compression' must be 0 (none) to 9, got {outputs.compression}."
        )
    if outputs.tile < 1:
        raise ConfigError(
            f"{source}: 'outputs.tile' (coarse cells per tile side) must be >= 1, got {outputs.tile}."
        )
    try:
        _output_name(outputs.pattern, inputs.variable, pd.Timestamp("2000-01-01"), "file", 0)
    except (KeyError, ValueError, IndexError) as error:
        raise ConfigError(
            f"{source}: 'outputs.pattern' {outputs.pattern!r} cannot be filled ({error!r}). Use the fields "
            f"{{variable}}, {{time:%Y%m%d}}, {{stem}} (input file name) and {{index}}."
        ) from None
    calibration = CalibrationConfig(**parsed["calibration"])
    if parsed["calibration"] and calibration.stations is None:
        raise ConfigError(
            f"{source}: the 'calibration' section needs 'calibration.stations', the file of stations at which "
            f"the std is calibrated. Add it, e.g. stations: {_EXAMPLE['existing'].replace('dem.tif', 'stations.csv')}"
        )
    if calibration.stations is not None and (model.type != "downscaler" or "std" not in outputs.variables):
        raise ConfigError(
            f"{source}: 'calibration' calibrates the std of a Downscaler at the stations, but "
            + (
                f"model.type is {model.type!r} (a UNet's std is its dropout spread). Remove the section."
                if model.type != "downscaler"
                else f"'outputs.variables' ({outputs.variables}) has no 'std'. Add 'std' or remove the section."
            )
        )
    if calibration.stations is not None and model.parameters.get("calibrate_std") is False:
        raise ConfigError(
            f"{source}: 'calibration' calibrates the std at the stations, but model.parameters.calibrate_std "
            f"is false. Remove one of the two."
        )
    dask = DaskConfig(**parsed["dask"])
    for key in ("threads", "workers"):
        value = getattr(dask, key)
        if value is not None and value < 1:
            raise ConfigError(f"{source}: 'dask.{key}' must be >= 1, got {value}.")
    return RunConfig(
        inputs=inputs,
        covariates=covariates,
        outputs=outputs,
        model=model,
        validation=ValidationConfig(**parsed["validation"]),
        calibration=calibration,
        dask=dask,
        path=path.resolve(),
    )


MODEL_TYPES = ("downscaler", "unet")
#: Format tag of a saved Downscaler parameter set (see :func:`save_model_parameters`).
PARAMETERS_FORMAT = "downscale.Downscaler"
#: Where a run keeps the model it used, in the output directory.
SAVED_MODEL = {"downscaler": "model.json", "unet": "model.pt"}
_UNET_SUFFIXES = (".pt", ".pth")


def _check_model(model, type_given, source):
    """Validate the ``model`` section: the type, then its parameters or its saved file."""
    if model.path is not None and not type_given:
        # A saved file says what it is; the default type would be wrong for UNet weights.
        model.type = "unet" if model.path.suffix.lower() in _UNET_SUFFIXES else "downscaler"
    if model.type not in MODEL_TYPES:
        raise ConfigError(
            f"{source}: 'model.type' must be 'downscaler' or 'unet', got {model.type!r}."
            f"{_closest(model.type, MODEL_TYPES)}"
        )
    if model.path is not None and model.parameters:
        raise ConfigError(
            f"{source}: 'model' has both 'parameters' (train a new model) and 'path' (a saved model, "
            f"{model.path.name}); keep one of them."
        )
    if model.type == "downscaler":
        if model.path is not None:
            model.parameters = _read_parameters(model.path, source)
        _check_parameters(model.parameters, source, saved=model.path)
    else:
        _check_unet(model, source)
    return model


def _read_parameters(path, source):
    """The Downscaler parameters of a saved parameter set (JSON or YAML)."""
    import yaml

    if path.suffix.lower() in _UNET_SUFFIXES:
        raise ConfigError(
            f"{source}: 'model.path' names {path.name}, UNet weights, but 'model.type' is 'downscaler'. "
            f"Set model.type: unet, or give a Downscaler parameter file (.json)."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"{source}: 'model.path' ({path.name}) is not a Downscaler parameter file (JSON or YAML): "
            f"{str(error).splitlines()[0]}. Write one with downscale.run.save_model_parameters."
        ) from None
    if isinstance(data, dict) and "format" in data:
        if data.get("format") != PARAMETERS_FORMAT or not isinstance(data.get("parameters"), dict):
            raise ConfigError(
                f"{source}: 'model.path' ({path.name}) has format {data.get('format')!r}, not "
                f"{PARAMETERS_FORMAT!r} with a 'parameters' mapping. Write one with "
                f"downscale.run.save_model_parameters."
            )
        data = data["parameters"]
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: 'model.path' ({path.name}) must hold a mapping of Downscaler parameters "
            f'(e.g. {{"trend": "linear"}}), got {type(data).__name__}.'
        )
    return data


def _check_parameters(parameters, source, saved=None):
    """Check Downscaler parameters; ``saved`` is the parameter file they come from, if any."""
    from .downscaler import Downscaler

    def where(key=None):
        name = "model.parameters" + ("" if key is None else f".{key}")
        return f"'{name}'" if saved is None else f"'{key or 'parameters'}' in 'model.path' ({saved.name})"

    valid = list(Downscaler().get_params(deep=False))
    for key in parameters:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key {where(key)}.{_closest(key, valid)}")
    if parameters.get("temporal", "per_step") != "per_step":
        raise ConfigError(
            f"{source}: {where('temporal')} must be 'per_step' in a run (one fit per time step), "
            f"got {parameters['temporal']!r}."
        )
    try:
        Downscaler(**parameters)._check_parameters()
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {where()}: {error}") from None


def _unet_class(source):
    try:
        from .models.unet import UNetDownscaler

        UNetDownscaler()
    except ImportError as error:
        raise ConfigError(f"{source}: 'model.type' is 'unet', which needs PyTorch. {error}") from None
    return UNetDownscaler


def _check_unet(model, source):
    UNetDownscaler = _unet_class(source)
    if model.path is not None:
        if model.path.suffix.lower() not in _UNET_SUFFIXES:
            raise ConfigError(
                f"{source}: 'model.path' names {model.path.name}, but a UNet is saved as a .pt file "
                f"(UNetDownscaler.save). Give that file, or set model.type: downscaler for a parameter file."
            )
        _load_unet(model.path, source)
        return
    valid = list(UNetDownscaler().get_params())
    for key in model.parameters:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key 'model.parameters.{key}'.{_closest(key, valid)}")
    mode = model.parameters.get("mode", "wald")
    if mode != "wald":
        raise ConfigError(
            f"{source}: 'model.parameters.mode' must be 'wald' in a run, got {mode!r}: a run has no fine "
            f"truth to train on. Train a supervised UNet in Python, save it, and give it as 'model.path'."
        )
    try:
        UNetDownscaler(**model.parameters)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: 'model.parameters': {error}") from None


def _load_unet(path, source=None):
    from .models.unet import UNetDownscaler

    try:
        return UNetDownscaler.load(path)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds on a foreign file
        where = f"{source}: " if source else ""
        raise ConfigError(
            f"{where}'model.path' ({Path(path).name}) cannot be loaded as a UNet "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}). Give a file written by "
            f"UNetDownscaler.save, or train one with 'model.parameters'."
        ) from None


def _unet_dropout(model):
    if model.path is not None:
        return _load_unet(model.path).get_params()["dropout"]
    return model.parameters.get("dropout", 0.1)


def save_model_parameters(model, path):
    """Save a :class:`~downscale.Downscaler`'s parameters as the JSON file that ``model.path`` reads.

    A run fits the Downscaler afresh on every time step, so what carries over from one run (or
    from a study in Python) to another is its parameter set, not fitted state: this file. Every
    ``downscale run`` with ``model.type: downscaler`` writes one, ``model.json``, in its output
    directory.

    Parameters
    ----------
    model : Downscaler or dict
        The estimator (its ``get_params(deep=False)``) or a mapping of its parameters.
    path : str or Path
        The ``.json`` file to write.

    Returns
    -------
    Path

    Examples
    --------
    >>> import json, pathlib, tempfile
    >>> import downscale as ds
    >>> path = save_model_parameters(ds.Downscaler(trend="linear"), pathlib.Path(tempfile.mkdtemp()) / "m.json")
    >>> saved = json.loads(path.read_text())
    >>> saved["format"], saved["parameters"]["trend"]
    ('downscale.Downscaler', 'linear')
    """
    import json

    parameters = dict(model.get_params(deep=False) if hasattr(model, "get_params") else model)
    for key, value in parameters.items():
        if isinstance(value, tuple):
            parameters[key] = list(value)
        elif not (value is None or isinstance(value, (str, bool, int, float, list))):
            raise ValueError(
                f"The parameter {key}={value!r} is not a plain value and cannot be saved to JSON; a saved "
                f"parameter set takes names only (e.g. trend='lightgbm' instead of a regressor object)."
            )
    path = Path(path)
    text = json.dumps({"format": PARAMETERS_FORMAT, "version": 1, "parameters": parameters}, indent=2)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(handle, "w") as file:
        file.write(text + "\n")
    _publish(temporary, path)
    return path


def _output_name(pattern, variable, time, stem, index):
    return pattern.format(variable=variable, time=time, stem=stem, index=index)


# ================================================================== the work


@dataclass
class WorkItem:
    """One time step of one input file, and where its output goes."""

    source: Path
    index: int | None
    time: pd.Timestamp | None
    output: Path
    error: str | None = None  # set when the input could not be read


@dataclass
class StepResult:
    """What happened to one work item: ``status`` is ``done``, ``skipped`` (already complete) or ``failed``."""

    item: WorkItem
    status: str
    seconds: float = 0.0
    message: str = ""


class _MissingVariable(ValueError):
    """An input file without the configured variable (a wrong ``inputs.variable`` if no file has it)."""

    def __init__(self, variable, names):
        super().__init__(f"has no variable {variable!r} (it has {names}); set inputs.variable.")
        self.names = names


def _open_coarse(path, variable):
    data = xr.open_dataset(path, decode_coords="all")
    if variable not in data.data_vars:
        names = sorted(data.data_vars)
        data.close()
        raise _MissingVariable(variable, names)
    return data


def plan_work(config: RunConfig) -> list:
    """List every time step of the input files in the time range, with its output path.

    A file that cannot be opened gives one item with ``error`` set (reported, not raised).
    """
    items = []
    seen = {}
    missing = []  # the variables of files without inputs.variable (None: unreadable for another reason)
    for path in config.inputs.paths:
        try:
            with _open_coarse(path, config.inputs.variable) as data:
                variable = data[config.inputs.variable]
                if "time" in variable.dims:
                    times = [pd.Timestamp(t) for t in variable["time"].values]
                else:
                    times = [pd.Timestamp(variable["time"].values) if "time" in variable.coords else None]
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported and skipped
            items.append(WorkItem(path, None, None, config.outputs.directory / f"{path.stem}.nc", f"{error}"))
            missing.append(error.names if isinstance(error, _MissingVariable) else None)
            continue
        for index, time in enumerate(times):
            if time is not None and (
                (config.inputs.start is not None and time < config.inputs.start)
                or (config.inputs.end is not None and time > config.inputs.end)
            ):
                continue
            name = _output_name(config.outputs.pattern, config.inputs.variable, time, path.stem, len(items))
            output = config.outputs.directory / name
            if output in seen:
                raise ConfigError(
                    f"{config.path}: 'outputs.pattern' {config.outputs.pattern!r} gives the same file {name} for "
                    f"{seen[output]} and {path.name}[{index}]; add {{time:%Y%m%d%H}} or {{stem}} to it."
                )
            seen[output] = f"{path.name}[{index}]"
            items.append(WorkItem(path, index if "time" in variable.dims else None, time, output))
    if missing and len(missing) == len(config.inputs.paths) and all(m is not None for m in missing):
        names = sorted({name for m in missing for name in m})
        raise ConfigError(
            f"{config.path}: 'inputs.variable' is {config.inputs.variable!r}, which none of the "
            f"{len(missing)} input file(s) has (they have {names}).{_closest(config.inputs.variable, names)}"
        )
    return items


# ============================================================ tiled downscaling


def _block_mean_tile(values, row_weights, factor):
    return grid_module._block_mean_array(values, row_weights, factor, 1e-9)[0]


def _masked(features, mask):
    features = np.asarray(features, dtype=np.float64)
    return features if mask is None else np.where(np.asarray(mask, dtype=bool), features, np.nan)


def _features_coarse_tile(features, mask, row_weights, factor):
    """Block means of a feature tile, and per feature the count, mean and squared deviations of its pixels."""
    features = _masked(features, mask)
    k = features.shape[0]
    flat = features.reshape(k, -1)
    finite = np.isfinite(flat)
    count = finite.sum(axis=1).astype(np.float64)
    total = np.where(finite, flat, 0.0).sum(axis=1)
    mean = np.divide(total, count, out=np.zeros(k), where=count > 0)
    squares = np.where(finite, (flat - mean[:, None]) ** 2, 0.0).sum(axis=1)
    return _block_mean_tile(features, row_weights, factor), np.stack([count, mean, squares])


def _pooled_std(moments):
    """Population std of every feature from per-tile ``(count, mean, squared deviations)`` (Chan et al.)."""
    count = np.zeros(moments[0].shape[1])
    mean = np.zeros_like(count)
    squares = np.zeros_like(count)
    for n_b, mean_b, squares_b in moments:
        n = count + n_b
        delta = mean_b - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, n_b / np.where(n > 0, n, 1.0), 0.0)
        mean = mean + delta * share
        squares = squares + squares_b + delta**2 * count * share
        count = n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(squares / np.where(count > 0, count, 1.0)), np.nan)


def _trend_tile(model, features):
    """Trend of a feature tile ``(k, ny, nx)``: NaN where a feature is NaN."""
    k, ny, nx = features.shape
    table = features.reshape(k, -1).T
    ok = np.isfinite(table).all(axis=1)
    out = np.full(ny * nx, np.nan)
    if ok.any():
        out[ok] = model.trend_models_[0].predict(table[ok])
    return out.reshape(ny, nx)


def _trend_pass_tile(model, features, mask, coarse_valid, row_weights, factor):
    """Block mean of the fine trend, the count of covariate gaps under valid coarse cells, and the sums of
    the trend's within-cell share (:func:`downscale.downscaler.within_cell_sums`)."""
    from .downscaler import within_cell_sums

    features = _masked(features, mask)
    trend = _trend_tile(model, features[model._used_index()])
    fine_valid = np.repeat(np.repeat(coarse_valid, factor, axis=0), factor, axis=1)
    if mask is not None:
        fine_valid &= np.asarray(mask, dtype=bool)
    gaps = (~np.isfinite(features) & fine_valid).reshape(features.shape[0], -1).sum(axis=1)
    return _block_mean_tile(trend, row_weights, factor), gaps, within_cell_sums(trend, factor)


def _output_tile(
    model, features, mask, residual, variance, coarse, row_weights, factor, wanted, train, smooth
):
    """Every output variable of one tile, as ``(len(wanted), ny, nx)`` float64."""
    features = _masked(features, mask)
    trend = _trend_tile(model, features)
    valid_pixels = np.isfinite(trend)
    residual = np.asarray(residual, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    if smooth is not None:
        smooth_values, sill = smooth
        gaps = ~np.isfinite(residual)
        residual = np.where(gaps, smooth_values, residual)
        variance = np.where(gaps, sill, variance)
    z = trend + residual
    prediction = model.transform_.inverse(z)
    low, high = model.bounds_
    if low is not None or high is not None:
        prediction = np.clip(prediction, -np.inf if low is None else low, np.inf if high is None else high)
    prediction = np.where(valid_pixels, prediction, np.nan)
    if model.residual == "atpk" and np.isfinite(prediction).any():
        from .models.transforms import _correct_array

        m = np.repeat(np.repeat(_block_mean_tile(prediction, row_weights, factor), factor, 0), factor, 1)
        c = np.repeat(np.repeat(np.asarray(coarse, dtype=np.float64), factor, 0), factor, 1)
        corrected = _correct_array(prediction, m, c, low, high)
        prediction = np.where(np.isfinite(c) & np.isfinite(m), corrected, prediction)
    out = [prediction]
    if "std" in wanted:
        total = variance + model.trend_variance_[0]
        std = model.std_scale_ * np.sqrt(total) * np.abs(model.transform_.derivative(z))
        out.append(np.where(valid_pixels, std, np.nan))
    if "aoa" in wanted:
        from .validation.aoa import area_of_applicability

        k, ny, nx = features.shape
        table = features.reshape(k, -1).T
        inside = np.zeros(ny * nx)
        finite = np.isfinite(table).all(axis=1)
        if finite.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inside[finite] = area_of_applicability(train, table[finite])[1]
        out.append(np.where(valid_pixels, inside.reshape(ny, nx), np.nan))
    return np.stack(out)


def _tile_slices(n_coarse, tile, factor):
    starts = range(0, n_coarse, tile)
    return [
        (slice(s, min(s + tile, n_coarse)), slice(s * factor, min(s + tile, n_coarse) * factor))
        for s in starts
    ]


def _feature_array(X, names, fine_chunk):
    import dask.array as da

    arrays = []
    for name in names:
        variable = X[name].transpose("y", "x")
        data = variable.data
        if not hasattr(data, "dask"):
            data = da.from_array(np.asarray(data), chunks=fine_chunk)
        arrays.append(data.astype(np.float64))
    return da.stack(arrays).rechunk({0: len(names), 1: fine_chunk, 2: fine_chunk})


def _as_mask_array(mask, fine_chunk):
    import dask.array as da

    if mask is None:
        return None
    data = mask.transpose("y", "x").data
    if not hasattr(data, "dask"):
        data = da.from_array(np.asarray(data, dtype=bool), chunks=fine_chunk)
    return data.astype(bool).rechunk(fine_chunk)


def _shared(value):
    """One graph key for an object many tile tasks take (a fitted model): on a dask.distributed cluster
    it is then sent to each worker once, instead of being embedded, pickled and shipped with every task."""
    import dask

    return dask.delayed(value, traverse=False)


def _fit_tiled(model, coarse, X, mask, tile):
    """Fit ``model`` (a Downscaler) on one coarse step exactly as ``Downscaler.fit``, holding only tiles."""
    import dask
    import dask.array as da

    from .models.transforms import make_transform
    from .models.trend import make_trend, retention

    model._check_parameters()
    coarse = model._check_coarse(coarse)
    if coarse.ndim != 2:
        raise ValueError(f"_fit_tiled takes one time step (dims ('y', 'x')), got {coarse.dims}.")
    X, variables = model._check_X(X)
    for name in variables:
        if X[name].dims != ("y", "x") and set(X[name].dims) != {"y", "x"}:
            raise ValueError(f"Covariate {name!r} has dims {X[name].dims}; select one time step first.")
    factor = model._nesting(coarse, X)
    bounds = model._resolve_bounds(coarse)
    transform = make_transform(model.transform, bounds)
    model.feature_names_ = variables
    model.n_features_in_ = len(variables)
    model.feature_names_in_ = np.asarray(variables, dtype=object)
    model.factor_ = factor
    model.bounds_ = bounds
    model.transform_ = transform
    model.fine_shape_ = (X.sizes["y"], X.sizes["x"])
    model.mask_ = None if mask is None else mask  # kept lazily; the tiles apply it
    values = model._clip_to_bounds(np.asarray(coarse.values, dtype=np.float64)[None], bounds)
    model.coarse_ = coarse.copy(data=values[0])

    fine_chunk = tile * factor
    features = _feature_array(X, variables, fine_chunk)
    mask_array = _as_mask_array(mask, fine_chunk)
    row_weights = grid_module.block_sum_weights(X, factor)
    cy, cx = coarse.shape
    rows, cols = _tile_slices(cy, tile, factor), _tile_slices(cx, tile, factor)

    def tiles(function, *extra):
        out = []
        for ys, fy in rows:
            for xs, fx in cols:
                m = None if mask_array is None else mask_array[fy, fx]
                out.append(
                    dask.delayed(function)(
                        *extra[:1],
                        features[:, fy, fx],
                        m,
                        *[e[ys, xs] for e in extra[1:]],
                        row_weights[fy],
                        factor,
                    )
                )
        return out

    def assemble(results, index=None):
        full = None
        k = 0
        for ys, _ in rows:
            for xs, _ in cols:
                part = results[k] if index is None else results[k][index]
                if full is None:
                    full = np.full((*part.shape[:-2], cy, cx), np.nan)
                full[..., ys, xs] = part
                k += 1
        return full

    # 1. Block means of the covariates, and their fine spread (for the retention of trend="auto").
    parts = dask.compute(*tiles(lambda f, m, w, fac: _features_coarse_tile(f, m, w, fac)))
    features_coarse = assemble(parts, 0)[None]  # (1, k, cy, cx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN covariates: retention 0
        coarse_std = np.nanstd(features_coarse[0].reshape(len(variables), -1), axis=1)
    model.retention_ = retention(_pooled_std([p[1] for p in parts]), coarse_std)
    z_coarse = transform.forward(values)
    n_valid = int((np.isfinite(z_coarse[0]) & np.isfinite(features_coarse[0]).all(axis=0)).sum())
    from .downscaler import MIN_CELLS_KRIGING, MIN_CELLS_TREND, within_cell_share

    needed = MIN_CELLS_KRIGING if model.residual == "atpk" else MIN_CELLS_TREND
    if n_valid < needed:
        raise ValueError(
            f"The coarse field has {n_valid} valid cell(s); the Downscaler needs at least {needed}. "
            f"Use a larger area, fill the gaps, or drop that time step."
        )
    # 2. The trend: chosen as in Downscaler.fit (trend="auto" selects on the coarse cells alone).
    model._choose_trend(coarse, features_coarse, z_coarse, [[0]], transform)
    features_coarse = features_coarse[:, model._used_index()]
    train_rows, target = model._coarse_rows(features_coarse, z_coarse, [0])
    trend = make_trend(model.trend_spec_, random_state=model.random_state, n_jobs=model.n_jobs)
    model.trend_models_ = [trend.fit(train_rows, target)]
    model.train_rows_ = train_rows

    # 3. Block means of the fine trend (and covariate gaps under valid coarse cells).
    coarse_valid = np.isfinite(values[0])
    parts = dask.compute(
        *tiles(
            lambda mdl, f, m, v, w, fac: _trend_pass_tile(mdl, f, m, v, w, fac),
            _shared(model),
            coarse_valid,
        )
    )
    trend_block = assemble(parts, 0)
    gaps = np.sum([p[1] for p in parts], axis=0)
    model.trend_within_share_ = within_cell_share(np.sum([p[2] for p in parts], axis=0))
    if gaps.any():
        names = [f"{n} ({c} pixels)" for n, c in zip(variables, gaps, strict=True) if c]
        raise ValueError(
            f"Covariates have NaN where the coarse target is valid: {', '.join(names)}. Fill the gaps "
            f"(e.g. downscale.covariates.fill_gaps), or give a mask to exclude those pixels."
        )
    residual = np.where(np.isfinite(z_coarse[0]), z_coarse[0] - trend_block, np.nan)
    model.residual_coarse_ = coarse.copy(data=residual)
    model.residual_coarse_.attrs = {"long_name": f"coarse residual of the trend ({transform.name} space)"}
    model.atpk_ = []
    if model.residual == "atpk":
        lazy = model.residual_coarse_.copy(data=da.from_array(residual, chunks=tile))
        model.atpk_ = model._fit_kriging(lazy, 1)
    model.trend_variance_ = model._trend_variance(features_coarse, z_coarse, residual.reshape(1, -1), [[0]])
    model.std_scale_ = 1.0
    model.wald_scale_ = None
    model._wald_inputs = (coarse, features_coarse, X)  # for a Wald calibration after the fit (_step_tiles)
    if model.calibrate_std:
        model.std_scale_ = model._wald_scale(coarse, features_coarse, X)
    return model


def downscale_step(coarse, X, parameters=None, mask=None, tile: int = 32, variables=("mean", "std")):
    """Downscale one time step in tiles: the lazy (dask-backed) result of ``Downscaler.fit`` + ``predict``.

    Parameters
    ----------
    coarse : xarray.DataArray
        Coarse field ``(y, x)`` of one time step.
    X : xarray.Dataset
        Fine covariates ``(y, x)``, numpy- or dask-backed (e.g. opened with ``chunks=``).
    parameters : dict, optional
        :class:`~downscale.Downscaler` parameters.
    mask : xarray.DataArray of bool, optional
        Fine pixels where a value is wanted.
    tile : int
        Tile side in coarse cells; the fine tiles are ``tile * factor`` pixels square.
    variables : sequence of {"mean", "std", "aoa"}
        Outputs: the prediction, its standard deviation, the area of applicability (1 inside, 0 outside).

    Returns
    -------
    xarray.Dataset
        Dask-backed variables on the fine grid (``<name>``, ``<name>_std``, ``aoa``), equal to the
        in-memory ``Downscaler`` result; compute or write it to get the values. The fitted model is
        in ``result.attrs`` only as its description; use :func:`run` for files.

    Examples
    --------
    >>> import numpy as np
    >>> import downscale as ds
    >>> scene = ds.datasets.synthetic_scene("lst", seed=0, shape=(60, 60), factor=10)
    >>> X = ds.covariates.build(dem=scene.dem, location=True, features=["elevation", "slope"])
    >>> params = dict(trend="linear", calibrate_std=False)
    >>> tiled = downscale_step(scene.coarse, X, params, mask=scene.mask, tile=2).compute()
    >>> memory = ds.Downscaler(**params).fit(scene.coarse, X, mask=scene.mask).predict(X)
    >>> bool(np.allclose(tiled["lst"], memory, rtol=0, atol=1e-10, equal_nan=True))
    True
    """
    return _step_tiles(coarse, X, parameters, mask, tile, variables)[0]


def _step_tiles(coarse, X, parameters, mask, tile, variables, calibration=None):
    """The lazy result of :func:`downscale_step` and its tile tasks ``[(fine rows, fine cols, delayed)]``.

    With ``calibration`` (the :class:`StepStations` of this step), the std is calibrated at those
    stations instead of by the Wald protocol: the tiles that hold a station are computed first (and
    kept for the writer), the split-conformal scale is taken from them, and every tile's std is
    multiplied by it.
    """
    import dask
    import dask.array as da

    from .downscaler import Downscaler

    variables = list(variables)
    model = Downscaler(**dict(parameters or {}))
    if calibration is not None:
        if "std" not in variables or "mean" not in variables:
            raise ValueError(
                f"A calibration at stations needs the 'mean' and 'std' outputs, got {variables}."
            )
        model.set_params(calibrate_std=False)  # the stations calibrate instead of the Wald protocol
    if mask is not None:
        mask = mask.astype(bool) if hasattr(mask, "astype") else mask
    _fit_tiled(model, coarse, X, mask, tile)
    wald_inputs = model.__dict__.pop("_wald_inputs")  # not shipped to the tiles with the model
    factor = model.factor_
    fine_chunk = tile * factor
    features = _feature_array(X, model.features_used_, fine_chunk)
    mask_array = _as_mask_array(mask, fine_chunk)
    row_weights = grid_module.block_sum_weights(X, factor)
    ny, nx = model.fine_shape_
    cy, cx = model.coarse_.shape
    if model.residual == "atpk":
        atpk = model.atpk_[0]
        residual, variance = atpk.predict(factor, return_variance=True)
        residual = residual.data.reshape(ny, nx)
        variance = variance.data.reshape(ny, nx)
    else:
        spread = float(np.nanvar(model.residual_coarse_.values))
        residual = da.zeros((ny, nx), chunks=fine_chunk)
        variance = da.full((ny, nx), spread, chunks=fine_chunk)
    smooth = None
    residual_values = model.residual_coarse_.values
    if model.residual == "atpk" and not np.isfinite(residual_values).all():
        from .downscaler import _fill_nearest

        # Coarse cells without data get a bilinear fill of the nearest residuals (as Downscaler.predict);
        # the fill is a coarse array, upsampled tile by tile with a one-cell halo.
        filled = _fill_nearest(residual_values)
        sill = float(model.atpk_[0].variogram_.sill + model.atpk_[0].variogram_.nugget)
        smooth = (_bilinear_tiled(filled, factor, tile), sill)
    coarse_values = model.coarse_.values
    wanted = [v for v in ("mean", "std", "aoa") if v in variables]
    train = getattr(model, "train_rows_", None)
    shared_model = _shared(model)

    rows_out = []
    tasks = []
    for ys, fy in _tile_slices(cy, tile, factor):
        for xs, fx in _tile_slices(cx, tile, factor):
            m = None if mask_array is None else mask_array[fy, fx]
            s = None if smooth is None else (smooth[0][fy, fx], smooth[1])
            task = dask.delayed(_output_tile)(
                shared_model,
                features[:, fy, fx],
                m,
                residual[fy, fx],
                variance[fy, fx],
                coarse_values[ys, xs],
                row_weights[fy],
                factor,
                wanted,
                train,
                s,
            )
            tasks.append((fy, fx, task))
    from .downscaler import _wald_guard

    calibration_note = (
        f"wald: scale {model.std_scale_:.4g}{_wald_guard(model)}"
        if model.calibrate_std and "std" in wanted
        else "none"
    )
    if calibration is not None:
        tasks, calibration_note = _calibrate_at_stations(model, tasks, wanted, calibration, wald_inputs)
    tasks_by_tile = iter(tasks)
    for _ys, fy in _tile_slices(cy, tile, factor):
        row = []
        for _xs, fx in _tile_slices(cx, tile, factor):
            _, _, task = next(tasks_by_tile)
            shape = (len(wanted), fy.stop - fy.start, fx.stop - fx.start)
            row.append(da.from_delayed(task, shape=shape, dtype=np.float64))
        rows_out.append(row)
    stacked = da.block(rows_out).rechunk({0: 1})
    name = coarse.name or "value"
    fine_coords = {"y": X["y"].values, "x": X["x"].values}
    out = xr.Dataset(coords=fine_coords)
    crs = grid_module.get_crs(X) or grid_module.get_crs(coarse)
    description = model._method_description()
    attrs = {k: v for k, v in coarse.attrs.items() if k not in ("cell_methods",)}
    attrs["downscale_method"] = description
    for i, kind in enumerate(wanted):
        if kind == "mean":
            out[name] = (("y", "x"), stacked[i], attrs)
        elif kind == "std":
            std_attrs = {
                "long_name": f"standard deviation of the downscaled {coarse.attrs.get('long_name', name)}",
                "downscale_method": description,
            }
            if "units" in coarse.attrs:
                std_attrs["units"] = coarse.attrs["units"]
            out[f"{name}_std"] = (("y", "x"), stacked[i], std_attrs)
        else:
            out["aoa"] = (
                ("y", "x"),
                stacked[i],
                {
                    "long_name": "inside the area of applicability of the trend model (1) or not (0)",
                    "units": "1",
                },
            )
    for axis in ("y", "x"):
        out[axis].attrs.update(X[axis].attrs)
    if crs is not None:
        out = grid_module.set_crs(out, crs)
        for variable in out.data_vars.values():
            variable.attrs["grid_mapping"] = "spatial_ref"
    out.attrs["downscale_trend_variance"] = float(model.trend_variance_[0])
    out.attrs["downscale_trend"] = _trend_label(model)
    out.attrs["downscale_std_calibration"] = calibration_note
    return out, tasks


@dataclass
class StepStations:
    """The station values of one time step on the fine grid: pixel ``rows`` / ``cols``, ``observed``, ``noise``."""

    rows: np.ndarray
    cols: np.ndarray
    observed: np.ndarray
    noise: np.ndarray


def _scaled_std(values, index, scale):
    """A tile's outputs ``(n_variables, ny, nx)`` with the std (row ``index``) multiplied by ``scale``."""
    out = np.array(values, dtype=np.float64, copy=True)
    out[index] *= scale
    return out


def _calibrate_at_stations(model, tasks, wanted, stations, wald_inputs):
    """Compute the tiles with a station, take the split-conformal scale there, scale every tile's std.

    Returns the new tile tasks and a note for the output's ``downscale_std_calibration`` attribute.
    With too few station values for a 90 % scale, the Wald protocol calibrates the step instead.
    """
    import dask

    from .downscaler import CALIBRATION_COVERAGE
    from .validation.stations import conformal_scale

    i_mean, i_std = wanted.index("mean"), wanted.index("std")
    holding = []
    for k, (fy, fx, _) in enumerate(tasks):
        inside = (stations.rows >= fy.start) & (stations.rows < fy.stop)
        inside &= (stations.cols >= fx.start) & (stations.cols < fx.stop)
        if inside.any():
            holding.append((k, np.flatnonzero(inside)))
    computed = dict(
        zip([k for k, _ in holding], dask.compute(*[tasks[k][2] for k, _ in holding]), strict=True)
    )
    predicted = np.full(stations.observed.size, np.nan)
    spread = np.full(stations.observed.size, np.nan)
    for k, members in holding:
        fy, fx, _ = tasks[k]
        r, c = stations.rows[members] - fy.start, stations.cols[members] - fx.start
        predicted[members] = computed[k][i_mean, r, c]
        spread[members] = computed[k][i_std, r, c]
    try:
        scale, n = conformal_scale(
            stations.observed, predicted, spread, CALIBRATION_COVERAGE, noise=stations.noise
        )
        note = f"stations: scale {scale:.4g} from {n} values"
    except ValueError as error:
        scale = model._wald_scale(*wald_inputs)
        from .downscaler import _wald_guard

        note = (
            f"wald: scale {scale:.4g}{_wald_guard(model, scale)} ({str(error).split(':')[0]}; too few to "
            "calibrate at the stations)"
        )
        logger.warning("std calibrated by the Wald protocol: %s", error)
    new_tasks = [
        (fy, fx, dask.delayed(_scaled_std)(computed.get(k, task), i_std, scale))
        for k, (fy, fx, task) in enumerate(tasks)
    ]
    return new_tasks, note


def _bilinear_tiled(coarse_values, factor, tile):
    """``grid.upsample(..., "bilinear")`` of a small coarse array, as a dask array of fine tiles.

    Each tile uses the whole grid's interpolation indices, so it equals the whole-grid result.
    """
    import dask.array as da

    array = da.from_array(np.zeros(coarse_values.shape), chunks=tile)

    def upsample(block, block_info=None):
        (y0, y1), (x0, x1) = block_info[0]["array-location"]
        return _bilinear_window(coarse_values, factor, slice(y0, y1), slice(x0, x1))

    chunks = tuple(tuple(c * factor for c in axis) for axis in array.chunks)
    return da.map_blocks(upsample, array, chunks=chunks, dtype=np.float64)


def _bilinear_window(values, factor, ys, xs):
    """Bilinear upsampling of ``values[ys, xs]`` computed with the whole grid's edge rules."""
    fy = slice(ys.start * factor, ys.stop * factor)
    fx = slice(xs.start * factor, xs.stop * factor)
    return grid_module._bilinear(values, factor, fy, fx)


# ================================================================ covariates


def _read_grid(path, name):
    """Read a (y, x) or (time, y, x) field from a GeoTIFF or a netCDF file."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import rioxarray

        raster = rioxarray.open_rasterio(path, masked=True)
        if "band" in raster.dims:
            if raster.sizes["band"] != 1:
                raise ConfigError(
                    f"covariates.{name}: {path.name} has {raster.sizes['band']} bands; give a single-band GeoTIFF."
                )
            raster = raster.squeeze("band", drop=True)
        raster = raster.drop_vars([c for c in raster.coords if c not in ("y", "x", "spatial_ref")])
        return raster.astype(np.float64).load().rename(name)
    with xr.open_dataset(path, decode_coords="all") as data:
        names = [n for n, v in data.data_vars.items() if {"y", "x"} <= set(v.dims)]
        if not names:
            raise ConfigError(f"covariates.{name}: {path.name} has no variable with dims (y, x).")
        chosen = name if name in names else names[0]
        return data[chosen].load()


def _covariate_key(config):
    parts = [repr(dataclasses.asdict(config.covariates))]
    for value in (config.covariates.dem, config.covariates.ndvi):
        if value is not None:
            stat = Path(value).stat()
            parts.append(f"{value}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def load_covariates(config: RunConfig, fine_chunk: int):
    """The fine covariates (dask-backed, chunked in tiles) and the mask (or None).

    A ready ``stack`` is opened lazily. Covariates built from a DEM / NDVI are computed once,
    cached in ``<outputs.directory>/covariates.nc`` and reopened lazily; a rerun with the same
    inputs reuses the cache.
    """
    from . import covariates as covariates_module

    cfg = config.covariates
    chunks = {"y": fine_chunk, "x": fine_chunk}
    if cfg.stack is not None:
        X = _open_lazy(cfg.stack, chunks)
        X = X[[n for n, v in X.data_vars.items() if {"y", "x"} <= set(v.dims)]]
    else:
        cache = config.outputs.directory / "covariates.nc"
        key = _covariate_key(config)
        X = None
        if cache.exists():
            try:
                X = _open_lazy(cache, chunks)
                if X.attrs.get("downscale_covariates_key") != key or X.attrs.get(COMPLETE_ATTRIBUTE) != 1:
                    X.close()
                    X = None
            except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt
                X = None
        if X is None:
            dem = None if cfg.dem is None else _read_grid(cfg.dem, "elevation")
            ndvi = None if cfg.ndvi is None else _read_grid(cfg.ndvi, "ndvi")
            options = {}
            if cfg.features is not None:
                options["features"] = cfg.features
            if cfg.tpi_radii is not None:
                options["tpi_radii"] = tuple(float(r) for r in cfg.tpi_radii)
            try:
                built = covariates_module.build(dem=dem, ndvi=ndvi, location=cfg.location, **options)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"{config.path}: building the covariates failed: {error}") from None
            _write_atomic(built, cache, compression=1, attrs={"downscale_covariates_key": key}, chunk=256)
            del built
            X = _open_lazy(cache, chunks)
    mask = None
    if cfg.mask is not None:
        mask = _read_grid(cfg.mask, "mask")
        mask = (mask.fillna(0) != 0).assign_coords(y=mask["y"], x=mask["x"])
        if mask.shape != (X.sizes["y"], X.sizes["x"]):
            raise ConfigError(
                f"{config.path}: covariates.mask has {mask.shape[0]} x {mask.shape[1]} cells but the covariates "
                f"have {X.sizes['y']} x {X.sizes['x']}; give the mask on the fine grid."
            )
    return X, mask


@contextlib.contextmanager
def _small_chunk_cache(size=4 * 2**20):
    """netCDF's default chunk cache is 64 MiB per variable: as large as a whole fine field of a
    mid-sized domain, it would make memory grow with the domain. Tiles are read and written once,
    so a small cache loses nothing."""
    import netCDF4

    previous = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(size, previous[1], previous[2])
    try:
        yield
    finally:
        netCDF4.set_chunk_cache(*previous)


def _open_lazy(path, chunks):
    with warnings.catch_warnings(), _small_chunk_cache():
        # Tiles need not match the file's own chunks; dask reads the overlapping ones.
        warnings.filterwarnings("ignore", message="The specified chunks separate")
        return xr.open_dataset(path, decode_coords="all", chunks=chunks)


def _covariates_at(X, time):
    """Static covariates as they are; time-varying ones at the nearest time."""
    if "time" not in X.dims:
        return X
    if time is None:
        raise ValueError("the covariates vary in time but the coarse field has no time coordinate.")
    return X.sel(time=np.datetime64(time), method="nearest").drop_vars("time")


# ==================================================================== writing


def _write_atomic(dataset, path, compression=4, attrs=None, chunk=None, tiles=None):
    """Write ``dataset`` to a temporary file next to ``path``, mark it complete, then rename it into place.

    With ``tiles`` (``[(rows, cols, delayed)]``, each delayed giving ``(n_variables, rows, cols)`` in
    the order of the data variables), the file is laid out first and the tiles are computed a few
    at a time and written as they arrive: only the tiles in flight are in memory.
    """
    import netCDF4

    path = Path(path)
    dataset = dataset.copy()
    if tiles is not None:
        import dask.array as da

        names = list(dataset.data_vars)
        for name in names:
            variable = dataset[name]
            empty = da.full(variable.shape, np.nan, chunks=chunk or -1, dtype=np.float64)
            dataset[name] = variable.copy(data=empty)
    dataset.attrs.update(attrs or {})
    encoding = {}
    for name, variable in dataset.data_vars.items():
        spec = {"zlib": compression > 0, "complevel": compression} if compression else {}
        if chunk is not None and {"y", "x"} <= set(variable.dims):
            spec["chunksizes"] = tuple(
                1 if d == "time" else min(variable.sizes[d], chunk) for d in variable.dims
            )
        if name == "aoa":
            spec.update(dtype="int8", _FillValue=-1)
        elif np.issubdtype(variable.dtype, np.floating):
            spec["_FillValue"] = np.nan
        encoding[name] = spec
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        with _small_chunk_cache():
            dataset.to_netcdf(temporary, engine="netcdf4", encoding=encoding)
        if tiles is not None:
            _fill_tiles(temporary, names, ["time" in dataset[n].dims for n in names], tiles)
        with netCDF4.Dataset(temporary, "a") as nc:
            nc.setncattr(COMPLETE_ATTRIBUTE, 1)  # written last: a file without it is not finished
        _publish(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _publish(temporary, path):
    """Move a finished temporary file into place (atomic), with the usual file mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes private files; outputs get the usual mode
    os.replace(temporary, path)


def _in_flight():
    """How many tiles to compute at once: two per worker thread of the active scheduler."""
    import dask

    try:
        from distributed import get_client

        client = get_client()
        return max(2, 2 * sum(client.nthreads().values()))
    except (ImportError, ValueError):
        pass
    if dask.config.get("scheduler", None) == "synchronous":
        return 1
    return max(2, 2 * int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def _fill_tiles(path, names, has_time, tiles):
    import dask
    import netCDF4

    batch = _in_flight()
    with _small_chunk_cache(), netCDF4.Dataset(path, "a") as nc:
        for start in range(0, len(tiles), batch):
            part = tiles[start : start + batch]
            values = dask.compute(*[task for _, _, task in part])
            for (rows, cols, _), tile in zip(part, values, strict=True):
                for i, name in enumerate(names):
                    target = nc[name]
                    data = tile[i]
                    if np.issubdtype(target.dtype, np.integer):
                        data = np.where(np.isfinite(data), data, target._FillValue).astype(target.dtype)
                    if has_time[i]:
                        target[0, rows, cols] = data
                    else:
                        target[rows, cols] = data
            del values


def is_complete(path, variables, shape, time=None, model=None) -> bool:
    """True when ``path`` is a finished output of this run.

    Checked, not assumed: the file opens, it carries the completion mark written last, the
    ``variables``, the fine grid ``shape``, the ``time`` and, when given, the ``model``
    identity (the ``downscale_model`` attribute: the Downscaler's parameters or the UNet file's
    digest), so outputs of another model are redone.

    Examples
    --------
    >>> is_complete("no/such/file.nc", ["lst"], (10, 10))
    False
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with xr.open_dataset(path) as data:
            if data.attrs.get(COMPLETE_ATTRIBUTE) != 1:
                return False
            if model is not None and data.attrs.get(MODEL_ATTRIBUTE) != model:
                return False
            if any(v not in data.data_vars for v in variables):
                return False
            if (data.sizes.get("y"), data.sizes.get("x")) != tuple(shape):
                return False
            if time is not None:
                if "time" not in data.coords or pd.Timestamp(data["time"].values.ravel()[0]) != pd.Timestamp(
                    time
                ):
                    return False
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is incomplete
        return False


def _output_names(variable, wanted):
    names = {"mean": variable, "std": f"{variable}_std", "aoa": "aoa"}
    return [names[w] for w in wanted]


# ===================================================================== the run


@contextlib.contextmanager
def _dask_context(config, scheduler=None, workers=None):
    """The dask scheduler of the run: a scheduler address, a LocalCluster, or local threads."""
    import dask

    scheduler = scheduler or config.dask.scheduler
    workers = workers or config.dask.workers
    if scheduler is not None or workers is not None:
        from distributed import Client, LocalCluster

        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="10s")
            except OSError as error:
                raise ConfigError(
                    f"Cannot reach the dask scheduler at {scheduler!r} ({error}). Start it (dask scheduler) "
                    f"or drop --scheduler to run locally."
                ) from None
            with client:
                yield f"dask scheduler {scheduler}"
            return
        with (
            LocalCluster(
                n_workers=int(workers),
                threads_per_worker=int(config.dask.threads),
                processes=bool(config.dask.processes),
                dashboard_address=None,
            ) as cluster,
            Client(cluster),
        ):
            yield f"dask LocalCluster of {workers} worker(s) x {config.dask.threads} thread(s)"
        return
    threads = int(config.dask.threads)
    if threads == 1:
        with dask.config.set(scheduler="synchronous"):
            yield "dask synchronous scheduler (1 thread)"
    else:
        with dask.config.set(scheduler="threads", num_workers=threads):
            yield f"dask threads ({threads})"


def _check_writable(directory):
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(
            f"The output directory {directory} is not writable ({error.strerror or error}). Choose another "
            f"'outputs.directory' in the configuration, or fix its permissions."
        ) from None


def _read_step(item, variable):
    if item.error is not None:
        raise ValueError(f"cannot read {item.source.name}: {item.error}")
    with _open_coarse(item.source, variable) as data:
        field = data[variable]
        if item.index is not None:
            field = field.isel(time=item.index)
        field = field.load()
    if "time" in field.dims:
        field = field.squeeze("time", drop=True)
    if not np.isfinite(field.values).any():
        raise ValueError(
            f"{item.source.name}: '{variable}' is NaN everywhere at {item.time}; nothing to downscale."
        )
    return field


def _trend_label(model):
    """The trend a fitted Downscaler used, e.g. ``"linear"``, ``"auto: rf (weight 0.89)"`` or
    ``"lightgbm (37 rounds from spatial CV)"``."""
    from .downscaler import _trend_details

    label = model.selected_trend_ + _trend_details(
        model.n_rounds_, model.trend_weight_, isinstance(model.trend_weight, str)
    )
    return f"auto: {label}" if isinstance(model.trend, str) and model.trend == "auto" else label


class CalibrationStations:
    """The stations of ``calibration.stations`` placed on the fine grid once; :meth:`at` picks a step's values."""

    def __init__(self, config, X, items):
        from .validation.stations import (
            _default_tolerance,
            _grid_positions,
            _nearest_cells,
            read_stations,
            station_noise_values,
        )

        section = config.calibration
        stations = read_stations(section.stations, crs=section.crs)
        if section.value_column not in stations.columns:
            raise ConfigError(
                f"{config.path}: 'calibration.value_column' is {section.value_column!r}, but the stations have "
                f"the columns {list(stations.columns)}. Name the column of the observed values."
            )
        # The cells calibrate_std samples ("nearest"), so a run calibrates like Downscaler.fit(stations=...).
        stations, row, col, keep = _grid_positions(stations, X[next(iter(X.data_vars))])
        self.rows, self.cols = _nearest_cells(row[keep], col[keep], (X.sizes["y"], X.sizes["x"]))
        self.observed = pd.to_numeric(stations[section.value_column], errors="coerce").to_numpy(float)[keep]
        try:
            self.noise = station_noise_values(stations, section.noise)[keep]
        except ValueError as error:
            raise ConfigError(f"{config.path}: 'calibration.noise' ({section.noise!r}): {error}") from None
        times = [item.time for item in items if item.time is not None]
        self.times = None
        if "time" in stations.columns:
            self.times = pd.to_datetime(stations["time"]).to_numpy()[keep]
            self.tolerance = _default_tolerance(np.array(sorted(set(times)), dtype="datetime64[ns]"))
        elif len(set(times)) > 1:
            raise ConfigError(
                f"{config.path}: the calibration stations have no 'time' column, but the run has "
                f"{len(set(times))} time steps. Add the time of each value (a 'time' or 'date' column)."
            )
        self.n_outside = int((~keep).sum())

    def at(self, time):
        """The :class:`StepStations` of the step at ``time`` (every value when the stations have no time)."""
        pick = np.ones(self.observed.size, dtype=bool)
        if self.times is not None and time is not None:
            pick = np.abs(self.times - np.datetime64(time, "ns")) <= self.tolerance
        return StepStations(self.rows[pick], self.cols[pick], self.observed[pick], self.noise[pick])


def _process(item, config, X, mask, model, calibration=None):
    """Downscale one work item and write its output; returns a note for the summary (the chosen trend)."""
    variable = config.inputs.variable
    coarse = _read_step(item, variable)
    coarse = coarse.drop_vars([c for c in coarse.coords if c not in ("y", "x", "spatial_ref")])
    X_step = _covariates_at(X, item.time)
    try:
        factor = grid_module.nesting_factor(coarse, X_step)
    except ValueError as error:
        raise ValueError(
            f"{item.source.name}: the coarse grid does not nest in the covariates' fine grid ({error}). "
            f"Bring the inputs onto one nested grid first (downscale.align)."
        ) from None
    if model.estimator is None:
        result, tasks = _step_tiles(
            coarse.rename(variable),
            X_step,
            config.model.parameters,
            mask=mask,
            tile=config.outputs.tile,
            variables=config.outputs.variables,
            calibration=None if calibration is None else calibration.at(item.time),
        )
    else:
        result, tasks = _unet_step(model.estimator, coarse.rename(variable), X_step, mask, config), None
    if item.time is not None:
        result = result.expand_dims(time=[np.datetime64(item.time, "ns")])
    attrs = {
        "Conventions": "CF-1.8",
        "source": f"{item.source.name}" + (f"[{item.index}]" if item.index is not None else ""),
        "history": f"{pd.Timestamp.now(tz='UTC'):%Y-%m-%dT%H:%M:%SZ} downscale run {config.path}",
        MODEL_ATTRIBUTE: model.identity,
    }
    if model.estimator is None:
        attrs["downscale_parameters"] = repr(dict(config.model.parameters))
    _write_atomic(
        result,
        item.output,
        compression=config.outputs.compression,
        attrs=attrs,
        chunk=config.outputs.tile * factor,
        tiles=tasks,
    )
    chosen = result.attrs.get("downscale_trend", "") if model.estimator is None else ""
    # The trend is worth a note when the run set something the configuration does not say.
    configured = str(dict(config.model.parameters).get("trend", "auto"))
    notes = [f"trend {chosen}"] if chosen and chosen != configured else []
    if calibration is not None:
        notes.append("std " + result.attrs["downscale_std_calibration"])
    return "; ".join(notes)


def _unet_step(estimator, coarse, X, mask, config):
    """One time step through a fitted UNet, on the whole fine grid (the network is not tiled).

    The mean is the deterministic prediction (dropout off), the same whether or not ``std``
    is asked for; ``std`` is the spread of the Monte-Carlo dropout samples.
    """
    X = X[estimator.covariate_names_].load()
    coarse = coarse.astype(np.float64)
    fine = estimator.predict(X, coarse=coarse, mask=mask)
    name = coarse.name
    out = xr.Dataset(coords={"y": X["y"].values, "x": X["x"].values})
    attrs = {k: v for k, v in coarse.attrs.items() if k not in ("cell_methods", "grid_mapping")}
    attrs["downscale_method"] = fine.attrs.get("downscaling_method", "UNetDownscaler")
    out[name] = (("y", "x"), np.asarray(fine.values, dtype=np.float64), attrs)
    if "std" in config.outputs.variables:
        _, std = estimator.predict(X, return_std=True, coarse=coarse, mask=mask)
        std_attrs = {
            "long_name": f"standard deviation of the downscaled {coarse.attrs.get('long_name', name)} "
            f"(Monte-Carlo dropout)",
            "downscale_method": attrs["downscale_method"],
        }
        if "units" in coarse.attrs:
            std_attrs["units"] = coarse.attrs["units"]
        out[f"{name}_std"] = (("y", "x"), np.asarray(std.values, dtype=np.float64), std_attrs)
    for axis in ("y", "x"):
        out[axis].attrs.update(X[axis].attrs)
    crs = grid_module.get_crs(X) or grid_module.get_crs(coarse)
    if crs is not None:
        out = grid_module.set_crs(out, crs)
        for variable in out.data_vars.values():
            variable.attrs["grid_mapping"] = "spatial_ref"
    return out


# ================================================================== the model


@dataclass
class RunModel:
    """The model of a run: ``estimator`` (a fitted UNet, or None: a Downscaler fitted per step) and its identity."""

    estimator: object
    identity: str
    description: str


def _file_digest(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _downscaler_identity(parameters):
    """All the Downscaler's parameters (defaults included), so equal models have equal identities."""
    import json

    from .downscaler import Downscaler

    full = Downscaler(**dict(parameters)).get_params(deep=False)
    full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    return "Downscaler " + json.dumps(full, sort_keys=True, default=repr)


def _unet_key(config, X):
    """What a trained UNet depends on: its parameters, the covariates, the mask, the time range."""
    import json

    return json.dumps(
        {
            "parameters": _unet_parameters(config),
            "covariates": _covariate_key(config),
            "names": sorted(X.data_vars),
            "shape": [X.sizes["y"], X.sizes["x"]],
            "inputs": [
                config.inputs.files,
                str(config.inputs.start),
                str(config.inputs.end),
                config.inputs.variable,
            ],
        },
        sort_keys=True,
        default=str,
    )


def _unet_parameters(config):
    parameters = dict(config.model.parameters)
    parameters.setdefault("n_threads", int(config.dask.threads))  # torch shares the run's threads
    return parameters


def _prepare_model(config, items, X, mask):
    """The model of the run: a Downscaler's parameters, a loaded UNet, or a UNet trained once on the series.

    The model used is kept in the output directory (``model.json`` / ``model.pt``); a UNet trained by
    an earlier run of the same configuration is reused, so a resumed run goes on with the same model.
    """
    directory = config.outputs.directory
    if config.model.type == "downscaler":
        from .downscaler import Downscaler

        save_model_parameters(Downscaler(**config.model.parameters), directory / SAVED_MODEL["downscaler"])
        identity = _downscaler_identity(config.model.parameters)
        description = f"Downscaler {dict(config.model.parameters)} fitted on every time step"
        section = config.calibration
        if section.stations is not None:  # other stations, another std: earlier outputs are stale
            identity += (
                f"; std calibrated at stations sha256:{_file_digest(section.stations)} "
                f"value={section.value_column} noise={section.noise!r} crs={section.crs}"
            )
            description += f", std calibrated at the stations of {section.stations.name}"
        return RunModel(None, identity, description)
    if config.model.path is not None:
        estimator = _load_unet(config.model.path, str(config.path))
        description = f"UNetDownscaler loaded from {config.model.path}"
        digest = _file_digest(config.model.path)
    else:
        estimator, description, digest = _trained_unet(config, items, X, mask)
    _check_unet_covariates(estimator, X, config)
    return RunModel(estimator, f"UNetDownscaler sha256:{digest}", description)


def _trained_unet(config, items, X, mask):
    target = config.outputs.directory / SAVED_MODEL["unet"]
    key_file = target.with_suffix(".key")
    key = _unet_key(config, X)
    if target.is_file() and key_file.is_file() and key_file.read_text() == key:
        try:
            estimator = _load_unet(target)
        except ConfigError as error:
            logger.warning("cannot reuse %s (%s); training again", target.name, error)
        else:
            logger.info("reusing the UNet trained by an earlier run of this configuration (%s)", target.name)
            return estimator, f"UNetDownscaler trained earlier, reused from {target}", _file_digest(target)
    UNetDownscaler = _unet_class(str(config.path))
    fields = []
    for item in items:
        try:
            field = _read_step(item, config.inputs.variable)
        except Exception as error:  # noqa: BLE001 - the step reports it when its turn comes
            logger.warning("not training on %s: %s", _label(item), str(error).splitlines()[0])
            continue
        field = field.drop_vars([c for c in field.coords if c not in ("y", "x", "spatial_ref")])
        stamp = np.datetime64(item.time, "ns") if item.time is not None else np.datetime64(len(fields), "D")
        fields.append(field.astype(np.float64).expand_dims(time=[stamp]))
    if not fields:
        raise ConfigError(
            f"{config.path}: no readable time step to train the UNet on; fix the inputs or give a trained "
            f"model as 'model.path'."
        )
    coarse = xr.concat(fields, dim="time")
    X_train = X
    if "time" in X.dims:
        X_train = X.sel(time=coarse["time"].values, method="nearest").assign_coords(
            time=coarse["time"].values
        )
    X_train = X_train.load()
    parameters = _unet_parameters(config)
    logger.info("training the UNet (Wald protocol) on %d time step(s): %s", len(fields), parameters)
    start = time_module.perf_counter()
    try:
        estimator = UNetDownscaler(**parameters).fit(coarse, X_train, mask=mask)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"{config.path}: training the UNet on {len(fields)} time step(s) failed: {error} "
            f"Change 'model.parameters' accordingly."
        ) from None
    del X_train
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        estimator.save(temporary)
        _publish(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    key_file.write_text(key)
    seconds = time_module.perf_counter() - start
    epochs = len(getattr(estimator, "history_", []))
    logger.info("trained the UNet in %.1f s (%d epoch(s)); saved to %s", seconds, epochs, target.name)
    description = f"UNetDownscaler trained (Wald) on {len(fields)} time step(s), saved to {target}"
    return estimator, description, _file_digest(target)


def _check_unet_covariates(estimator, X, config):
    names = list(getattr(estimator, "covariate_names_", []))
    missing = [n for n in names if n not in X.data_vars]
    if missing:
        raise ConfigError(
            f"{config.path}: the UNet of 'model.path' was trained with the covariates {names}; this run's "
            f"covariates lack {missing} (they are {sorted(X.data_vars)}). Set 'covariates' as when it was "
            f"trained (features, location, ndvi)."
        )


def _log_handler(directory):
    handler = logging.FileHandler(Path(directory) / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


def run(config: RunConfig, scheduler=None, workers=None, progress: bool = False) -> list:
    """Process every time step of ``config``; return one :class:`StepResult` per step.

    Complete outputs are skipped; failures are logged and the run goes on. A
    ``KeyboardInterrupt`` stops it after removing the temporary file of the
    step under way (finished files are kept), and is re-raised.
    """
    directory = config.outputs.directory
    _check_writable(directory)
    for leftover in directory.glob(".*.part"):
        leftover.unlink(missing_ok=True)
    handler = _log_handler(directory)
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    results = []
    try:
        items = plan_work(config)
        logger.info(
            "run %s: %d time step(s) from %d file(s)", config.path, len(items), len(config.inputs.paths)
        )
        with _dask_context(config, scheduler, workers) as where:
            logger.info("computing with %s", where)
            X, mask = _covariates_for(config, items)
            model = _prepare_model(config, items, X, mask)
            logger.info("model: %s", model.description)
            calibration = None
            if config.calibration.stations is not None:
                calibration = CalibrationStations(config, X, items)
                logger.info(
                    "std calibrated at the stations of %s (%d values on the grid, %d outside it)",
                    config.calibration.stations.name,
                    calibration.observed.size,
                    calibration.n_outside,
                )
                if config.validation.stations is not None and (
                    config.validation.stations.resolve() == config.calibration.stations.resolve()
                ):
                    logger.warning(
                        "the same stations calibrate the std and validate the outputs: the interval coverage "
                        "at them is in-sample; keep some stations out of the calibration to check it"
                    )
            bar = _progress_bar(len(items), progress)
            try:
                for item in items:
                    start = time_module.perf_counter()
                    try:
                        names = _output_names(config.inputs.variable, config.outputs.variables)
                        shape = (X.sizes["y"], X.sizes["x"])
                        if is_complete(item.output, names, shape, item.time, model.identity):
                            result = StepResult(item, "skipped", 0.0, "complete output exists")
                        else:
                            note = _process(item, config, X, mask, model, calibration)
                            result = StepResult(item, "done", time_module.perf_counter() - start, note)
                    except ConfigError:
                        raise
                    except Exception as error:  # noqa: BLE001 - one bad step must not stop the others
                        message = str(error).splitlines()[0] if str(error) else type(error).__name__
                        result = StepResult(item, "failed", time_module.perf_counter() - start, message)
                        logger.error("failed %s: %s", _label(item), message)
                    else:
                        logger.info(
                            "%s %s (%.1f s%s)",
                            result.status,
                            _label(item),
                            result.seconds,
                            f", {result.message}" if result.status == "done" and result.message else "",
                        )
                    results.append(result)
                    bar.update(1)
            except KeyboardInterrupt:
                logger.warning(
                    "interrupted after %d of %d step(s); finished outputs are kept", len(results), len(items)
                )
                raise
            finally:
                bar.close()
        if config.validation.stations is not None:
            _score_stations(config, results)
    finally:
        logger.info("summary:\n%s", summary_table(results))
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous_level)
    return results


def _covariates_for(config, items):
    """Open the covariates chunked in tiles of ``outputs.tile`` coarse cells (the factor comes from the inputs)."""
    X, mask = load_covariates(config, fine_chunk=512)
    for item in items:
        if item.error is not None:
            continue
        try:
            with _open_coarse(item.source, config.inputs.variable) as data:
                factor = grid_module.nesting_factor(data[config.inputs.variable], X)
        except Exception:  # noqa: BLE001 - the step itself reports it
            continue
        X.close()
        return load_covariates(config, fine_chunk=config.outputs.tile * factor)
    return X, mask


def _label(item):
    where = item.source.name + (f"[{item.index}]" if item.index is not None else "")
    return f"{where} -> {item.output.name}"


def _progress_bar(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, unit="step", desc="downscale run", disable=not enabled, file=sys.stderr)


def summary_table(results) -> str:
    """A plain-text table: input, time, output, status, seconds, message."""
    header = ("input", "time", "output", "status", "seconds", "message")
    rows = [
        (
            r.item.source.name + (f"[{r.item.index}]" if r.item.index is not None else ""),
            ""
            if r.item.time is None
            else str(r.item.time.date() if r.item.time == r.item.time.normalize() else r.item.time),
            r.item.output.name,
            r.status,
            f"{r.seconds:.1f}",
            r.message,
        )
        for r in results
    ]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped (complete), {counts['failed']} failed")
    return "\n".join(lines)


def _score_stations(config, results):
    from .validation.stations import read_stations, station_scores

    paths = [r.item.output for r in results if r.status in ("done", "skipped")]
    if not paths:
        return
    variable = config.inputs.variable
    try:
        stations = read_stations(config.validation.stations, crs=config.validation.crs)
        with xr.open_mfdataset(paths, decode_coords="all", combine="by_coords") as data:
            field = data[variable].load()
        scores = station_scores(field, stations, value=config.validation.value_column, ci=False)
    except Exception as error:  # noqa: BLE001 - scoring is a report, not part of the outputs
        logger.error("station scores failed: %s", error)
        return
    target = config.outputs.directory / "station_scores.csv"
    scores.to_csv(target)
    overall = scores.loc["overall"]
    logger.info(
        "station scores (%s): rmse %.4g, bias %.4g, kge %.3f over %d pairs",
        target.name,
        overall["rmse"],
        overall["bias"],
        overall["kge"],
        int(overall["n"]),
    )


def run_command(config_path, dry_run: bool = False, scheduler=None, workers=None) -> int:
    """The ``downscale run`` command: 0 when every step is done, 1 when some failed, 2 on a configuration error."""
    progress = sys.stderr.isatty() and not os.environ.get("CI")
    with _terminate_as_interrupt():
        return _run_command(config_path, dry_run, scheduler, workers, progress)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a batch system's time limit, ``kill``) stops the run as Ctrl-C does: no half file."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_command(config_path, dry_run, scheduler, workers, progress):
    try:
        config = load_config(config_path)
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}.")
        if dry_run:
            return _dry_run(config)
        results = run(config, scheduler=scheduler, workers=workers, progress=progress)
    except ConfigError as error:
        print(f"downscale run: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(summary_table(results))
    print(f"Outputs and run.log in {config.outputs.directory}")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(
            f"{len(failed)} step(s) failed; see the table above and run.log. A rerun redoes only those.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _dry_run(config):
    items = plan_work(config)
    print(f"Configuration {config.path} is valid.")
    print(
        f"  inputs: {len(config.inputs.paths)} file(s), variable '{config.inputs.variable}', {len(items)} time step(s)"
    )
    print(f"  model: {_model_summary(config, items)}")
    print(f"  outputs: {config.outputs.directory} ({', '.join(config.outputs.variables)})")
    for item in items:
        if item.error is not None:
            state = f"unreadable: {item.error}"
        elif item.output.exists():
            state = "exists (checked at run time)"
        else:
            state = "to do"
        print(f"  {_label(item)}: {state}")
    return EXIT_OK


def _model_summary(config, items):
    model = config.model
    if model.type == "downscaler":
        source = f" (from {model.path})" if model.path is not None else ""
        return f"downscaler {model.parameters}{source}, fitted on every time step"
    if model.path is not None:
        return f"unet loaded from {model.path}"
    readable = sum(item.error is None for item in items)
    return (
        f"unet {_unet_parameters(config)}, trained once (Wald protocol) on the {readable} readable time step(s), "
        f"saved to {config.outputs.directory / SAVED_MODEL['unet']}"
    )
