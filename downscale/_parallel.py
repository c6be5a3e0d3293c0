"""Parallel numba kernels that are safe to launch from several threads at once.

numba runs ``parallel=True`` kernels on a threading layer: TBB or OpenMP, which accept launches from
several threads at once (dask's threaded tiles, the flow routing's thread in
:func:`downscale.covariates.dem.dem_features`), or its fallback "workqueue" (where neither is
installed), which terminates the process when two threads launch kernels at the same time.
:func:`parallel_kernel` compiles a kernel and, only on the workqueue layer, lets one thread launch at
a time.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np

_launch_lock = threading.Lock()
_layer_is_threadsafe = None  # decided on the first launch: numba picks its layer then


@numba.njit(cache=True, parallel=True)
def _probe(values):
    total = 0.0
    for i in numba.prange(values.size):
        total += values[i]
    return total


def layer_is_threadsafe() -> bool:
    """Whether numba's threading layer accepts parallel launches from several threads at once."""
    global _layer_is_threadsafe
    if _layer_is_threadsafe is None:
        with _launch_lock:
            if _layer_is_threadsafe is None:
                _probe(np.zeros(2))
                _layer_is_threadsafe = numba.threading_layer() != "workqueue"
    return _layer_is_threadsafe


def parallel_kernel(function):
    """Compile ``function`` with ``numba.njit(cache=True, parallel=True, nogil=True)``, launched safely.

    The result is called like the kernel; on the workqueue layer its launches hold a lock shared by
    every parallel kernel of the package. The compiled dispatcher is its ``kernel`` attribute.
    """
    kernel = numba.njit(cache=True, parallel=True, nogil=True)(function)

    @functools.wraps(function)
    def launch(*args):
        if layer_is_threadsafe():
            return kernel(*args)
        with _launch_lock:
            return kernel(*args)

    launch.kernel = kernel
    return launch
