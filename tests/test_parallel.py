"""Parallel kernels launched from several threads: serialised only on numba's workqueue layer."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import downscale as ds
from downscale import _parallel


class CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self):
        self.lock = threading.Lock()
        self.taken = 0

    def __enter__(self):
        self.lock.acquire()
        self.taken += 1
        return self

    def __exit__(self, *exc):
        self.lock.release()


@pytest.mark.parametrize("threadsafe", [True, False])
def test_kernels_hold_the_lock_only_on_a_layer_that_is_not_threadsafe(threadsafe, monkeypatch):
    lock = CountingLock()
    monkeypatch.setattr(_parallel, "_layer_is_threadsafe", threadsafe)
    monkeypatch.setattr(_parallel, "_launch_lock", lock)
    values = np.arange(16.0).reshape(4, 4)
    mean, fraction = ds.grid._block_mean_array(values, np.ones(4), 2, 0.5)
    np.testing.assert_array_equal(mean, [[2.5, 4.5], [10.5, 12.5]])
    assert lock.taken == (0 if threadsafe else 1)


@pytest.mark.parametrize("threadsafe", [True, False])
def test_concurrent_launches_give_the_serial_results(threadsafe, monkeypatch):
    monkeypatch.setattr(_parallel, "_layer_is_threadsafe", threadsafe)
    rng = np.random.default_rng(0)
    fields = [rng.normal(size=(3, 60, 60)) for _ in range(8)]
    expected = [ds.grid._block_mean_numpy(f, np.ones(60), 6, 0.5)[0] for f in fields]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda f: ds.grid._block_mean_array(f, np.ones(60), 6, 0.5)[0], fields))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_the_layer_in_use_is_known_after_the_first_launch():
    assert _parallel.layer_is_threadsafe() in (True, False)
    import numba

    assert (numba.threading_layer() != "workqueue") == _parallel.layer_is_threadsafe()
