"""Compiled (numba) kernels of the grid and the Downscaler: block mean, NaN-aware standard deviation, fingerprint.

Kept apart so that they are compiled at module level, where numba's on-disk cache works:
the first import after installation compiles them once (a few seconds); later imports load them.
Each kernel computes what its numpy reference computes (:func:`downscale.grid._block_mean_numpy`,
:func:`numpy.nanstd`; tests compare them): the same sums, added in the same order as numpy's pairwise
summation, so on the numpy builds tested the results agree bit for bit.
"""

import numba
import numpy as np

from ._parallel import parallel_kernel

#: Longest run that numpy's pairwise summation adds with eight accumulators before halving it.
PAIRWISE_BLOCK = 128


@numba.njit(cache=True, inline="always")
def _term(value, centre, square):
    """What ``value`` adds to a sum: 0 for NaN, else ``value - centre``, squared when ``square``."""
    if np.isnan(value):
        return 0.0
    deviation = np.float64(value) - centre
    return deviation * deviation if square else deviation


@numba.njit(cache=True)
def _block_sum(row, start, n, centre, square):
    """Sum of :func:`_term` over ``row[start:start + n]``, ``n <= PAIRWISE_BLOCK``, in numpy's order.

    numpy adds such a run with eight interleaved accumulators (one by one below eight values).
    """
    if n < 8:
        total = 0.0
        for i in range(start, start + n):
            total += _term(row[i], centre, square)
        return total
    r0 = _term(row[start], centre, square)
    r1 = _term(row[start + 1], centre, square)
    r2 = _term(row[start + 2], centre, square)
    r3 = _term(row[start + 3], centre, square)
    r4 = _term(row[start + 4], centre, square)
    r5 = _term(row[start + 5], centre, square)
    r6 = _term(row[start + 6], centre, square)
    r7 = _term(row[start + 7], centre, square)
    i = start + 8
    stop = start + n - n % 8
    while i < stop:
        r0 += _term(row[i], centre, square)
        r1 += _term(row[i + 1], centre, square)
        r2 += _term(row[i + 2], centre, square)
        r3 += _term(row[i + 3], centre, square)
        r4 += _term(row[i + 4], centre, square)
        r5 += _term(row[i + 5], centre, square)
        r6 += _term(row[i + 6], centre, square)
        r7 += _term(row[i + 7], centre, square)
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < start + n:
        total += _term(row[i], centre, square)
        i += 1
    return total


@numba.njit(cache=True)
def _pairwise_sum(row, start, n, centre, square):
    """Sum of :func:`_term` over ``row[start:start + n]``, in the order of numpy's pairwise summation.

    numpy sums a run of at most ``PAIRWISE_BLOCK`` values directly (:func:`_block_sum`) and a longer
    one as the sum of its two halves, split at a multiple of eight. The tree of halves is laid out
    level by level (children after their parent) and summed from the last node back: no recursion,
    which numba cannot cache.
    """
    if n <= PAIRWISE_BLOCK:
        return _block_sum(row, start, n, centre, square)
    size = 2 * (n // 64 + 1)  # every leaf holds at least 64 values: fewer than 2 n / 64 nodes
    starts = np.empty(size, np.int64)
    lengths = np.empty(size, np.int64)
    first_child = np.full(size, -1, np.int64)
    starts[0], lengths[0] = start, n
    count = 1
    node = 0
    while node < count:
        if lengths[node] > PAIRWISE_BLOCK:
            half = lengths[node] // 2
            half -= half % 8
            first_child[node] = count
            starts[count], lengths[count] = starts[node], half
            starts[count + 1], lengths[count + 1] = starts[node] + half, lengths[node] - half
            count += 2
        node += 1
    sums = np.empty(count)
    for node in range(count - 1, -1, -1):
        child = first_child[node]
        if child < 0:
            sums[node] = _block_sum(row, starts[node], lengths[node], centre, square)
        else:
            sums[node] = sums[child] + sums[child + 1]
    return sums[0]


@parallel_kernel
def block_mean(values, row_weights, factor, min_valid):
    """Block means and valid fractions of ``values (n, ny, nx)`` over ``factor x factor`` blocks.

    The kernel of :func:`downscale.grid._block_mean_array` (see there); ``row_weights`` has one
    weight per fine row. Returns ``(mean, fraction)``, both ``(n, ny // factor, nx // factor)``.
    """
    n, ny, nx = values.shape
    by, bx = ny // factor, nx // factor
    mean = np.empty((n, by, bx))
    fraction = np.empty((n, by, bx))
    for task in numba.prange(n * by):
        t, i = task // by, task % by
        first_row = i * factor
        total_weight = factor * _pairwise_sum(row_weights, first_row, factor, 0.0, False)
        weighted = np.zeros(bx)
        valid_weight = np.zeros(bx)
        for r in range(factor):
            weight = np.float64(row_weights[first_row + r])
            row = values[t, first_row + r]
            for j in range(bx):
                start = j * factor
                count = 0
                for c in range(start, start + factor):
                    if not np.isnan(row[c]):
                        count += 1
                weighted[j] += _pairwise_sum(row, start, factor, 0.0, False) * weight
                valid_weight[j] += count * weight
        for j in range(bx):
            share = valid_weight[j] / total_weight
            fraction[t, i, j] = share
            if valid_weight[j] > 0 and share >= min_valid - 1e-12:
                mean[t, i, j] = weighted[j] / valid_weight[j]
            else:
                mean[t, i, j] = np.nan
    return mean, fraction


@parallel_kernel
def nanstd_rows(values):
    """``numpy.nanstd(values, axis=1)`` of a float64 ``(k, n)`` array (NaN for a row without values).

    Two passes over each row, as numpy does: the mean of the valid values, then the mean squared
    deviation from it.
    """
    k, n = values.shape
    out = np.empty(k)
    for row_index in numba.prange(k):
        row = values[row_index]
        count = 0
        for i in range(n):
            if not np.isnan(row[i]):
                count += 1
        mean = _pairwise_sum(row, 0, n, 0.0, False) / count if count else np.nan
        variance = _pairwise_sum(row, 0, n, mean, True) / count if count else np.nan
        out[row_index] = np.sqrt(variance)
    return out


@numba.njit(cache=True, nogil=True)
def fingerprint(words):
    """A 64-bit hash of every bit of ``words`` (a 1-D uint64 array, e.g. float64 values viewed as words).

    FNV-1a over whole words with a shift-xor after each multiplication, so that high bits reach the
    low ones: any changed value changes the result, except for a 1 in 2**64 collision.
    """
    h = np.uint64(14695981039346656037)
    prime = np.uint64(1099511628211)
    shift = np.uint64(29)
    for word in words:
        h ^= word
        h *= prime
        h ^= h >> shift
    return h
