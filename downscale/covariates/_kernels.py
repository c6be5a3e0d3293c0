"""Compiled (numba) kernels of the terrain features: 3 x 3 derivatives, roughness, summed areas, D8 routing.

Kept apart so that they are compiled at module level, where numba's on-disk cache works:
the first import after installation compiles them once (a few seconds); later imports load them.
Each kernel computes exactly what the numpy reference code in :mod:`downscale.covariates.dem`
computes (tests compare the two).
"""

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def first(before, centre, after, h):
    if np.isnan(centre):
        return np.nan
    has_before = not np.isnan(before)
    has_after = not np.isnan(after)
    if has_before and has_after:
        return (after - before) / (2.0 * h)
    if has_after:
        return (after - centre) / h
    if has_before:
        return (centre - before) / h
    return 0.0


@numba.njit(cache=True, inline="always")
def second(before, centre, after, h):
    if np.isnan(before) or np.isnan(after):
        return 0.0
    return (after - 2.0 * centre + before) / (h * h)


@numba.njit(cache=True, parallel=True, nogil=True)
def terrain(z, step_north, step_east, horn):
    ny, nx = z.shape
    tan_slope = np.empty((ny, nx))
    north = np.empty((ny, nx))
    east = np.empty((ny, nx))
    profile = np.empty((ny, nx))
    plan = np.empty((ny, nx))
    slope = np.empty((ny, nx))
    for i in numba.prange(ny):
        for j in range(nx):
            zc = z[i, j]
            if 0 < i < ny - 1 and 0 < j < nx - 1:
                z_ul = z[i - 1, j - 1]
                z_u = z[i - 1, j]
                z_ur = z[i - 1, j + 1]
                z_l = z[i, j - 1]
                z_r = z[i, j + 1]
                z_dl = z[i + 1, j - 1]
                z_d = z[i + 1, j]
                z_dr = z[i + 1, j + 1]
                if not np.isnan(zc + z_ul + z_u + z_ur + z_l + z_r + z_dl + z_d + z_dr):
                    # Complete window (almost every cell): the same arithmetic as below, without branches.
                    h = step_east[i]
                    p = (z_r - z_l) / (2.0 * h)
                    q = (z_d - z_u) / (2.0 * step_north)
                    p_up = (z_ur - z_ul) / (2.0 * step_east[i - 1])
                    p_down = (z_dr - z_dl) / (2.0 * step_east[i + 1])
                    r = (z_r - 2.0 * zc + z_l) / (h * h)
                    t = (z_d - 2.0 * zc + z_u) / (step_north * step_north)
                    s = (p_down - p_up) / (2.0 * step_north)
                    if horn:
                        q_left = (z_dl - z_ul) / (2.0 * step_north)
                        q_right = (z_dr - z_ur) / (2.0 * step_north)
                        gx = 2.0 * p
                        gx += p_up
                        gx += p_down
                        gx /= 4.0
                        gy = 2.0 * q
                        gy += q_left
                        gy += q_right
                        gy /= 4.0
                    else:
                        gx = p
                        gy = q
                    _store(tan_slope, north, east, profile, plan, slope, i, j, gx, gy, p, q, r, s, t)
                    continue
            if np.isnan(zc):
                tan_slope[i, j] = np.nan
                north[i, j] = np.nan
                east[i, j] = np.nan
                profile[i, j] = np.nan
                plan[i, j] = np.nan
                slope[i, j] = np.nan
                continue
            # p (d/d east) on rows i-1, i, i+1 and q (d/d north) on columns j-1, j, j+1.
            left = z[i, j - 1] if j > 0 else np.nan
            right = z[i, j + 1] if j < nx - 1 else np.nan
            up = z[i - 1, j] if i > 0 else np.nan
            down = z[i + 1, j] if i < ny - 1 else np.nan
            p = first(left, zc, right, step_east[i])
            q = first(up, zc, down, step_north)
            p_up = np.nan
            p_down = np.nan
            q_left = np.nan
            q_right = np.nan
            if i > 0:
                p_up = first(
                    z[i - 1, j - 1] if j > 0 else np.nan,
                    up,
                    z[i - 1, j + 1] if j < nx - 1 else np.nan,
                    step_east[i - 1],
                )
            if i < ny - 1:
                p_down = first(
                    z[i + 1, j - 1] if j > 0 else np.nan,
                    down,
                    z[i + 1, j + 1] if j < nx - 1 else np.nan,
                    step_east[i + 1],
                )
            if j > 0:
                q_left = first(
                    z[i - 1, j - 1] if i > 0 else np.nan,
                    left,
                    z[i + 1, j - 1] if i < ny - 1 else np.nan,
                    step_north,
                )
            if j < nx - 1:
                q_right = first(
                    z[i - 1, j + 1] if i > 0 else np.nan,
                    right,
                    z[i + 1, j + 1] if i < ny - 1 else np.nan,
                    step_north,
                )
            r = second(left, zc, right, step_east[i])
            t = second(up, zc, down, step_north)
            s = first(p_up, p, p_down, step_north)
            if horn:
                gx = 2.0 * p
                wx = 2.0
                gy = 2.0 * q
                wy = 2.0
                if not np.isnan(p_up):
                    gx += p_up
                    wx += 1.0
                if not np.isnan(p_down):
                    gx += p_down
                    wx += 1.0
                if not np.isnan(q_left):
                    gy += q_left
                    wy += 1.0
                if not np.isnan(q_right):
                    gy += q_right
                    wy += 1.0
                gx /= wx
                gy /= wy
            else:
                gx = p
                gy = q
            _store(tan_slope, north, east, profile, plan, slope, i, j, gx, gy, p, q, r, s, t)
    return tan_slope, north, east, profile, plan, slope


@numba.njit(cache=True, inline="always")
def _store(tan_slope, north, east, profile, plan, slope, i, j, gx, gy, p, q, r, s, t):
    magnitude = np.sqrt(gx * gx + gy * gy)
    tan_slope[i, j] = magnitude
    slope[i, j] = np.degrees(np.arctan(magnitude))
    if magnitude > 1e-12:
        north[i, j] = -gy / magnitude
        east[i, j] = -gx / magnitude
    else:
        north[i, j] = 0.0
        east[i, j] = 0.0
    p2 = p * p
    q2 = q * q
    gradient2 = p2 + q2
    if gradient2 > 1e-20:
        # x ** 1.5 written as x * sqrt(x): pow() would double the kernel's time.
        one_plus = 1.0 + gradient2
        profile[i, j] = -(p2 * r + 2.0 * p * q * s + q2 * t) / (gradient2 * one_plus * np.sqrt(one_plus))
        plan[i, j] = -(q2 * r - 2.0 * p * q * s + p2 * t) / (gradient2 * np.sqrt(gradient2))
    else:
        profile[i, j] = 0.0
        plan[i, j] = 0.0


@numba.njit(cache=True, parallel=True, nogil=True)
def roughness(z):
    ny, nx = z.shape
    out = np.empty((ny, nx))
    for i in numba.prange(ny):
        for j in range(nx):
            centre = z[i, j]
            if np.isnan(centre):
                out[i, j] = np.nan
                continue
            # One pass on differences from the centre: no cancellation at high elevations.
            total = 0.0
            square = 0.0
            if 0 < i < ny - 1 and 0 < j < nx - 1:
                # Interior cell: the same sums in the same order, NaN-checked once at the end.
                for ii in range(i - 1, i + 2):
                    for jj in range(j - 1, j + 2):
                        d = z[ii, jj] - centre
                        total += d
                        square += d * d
                if not np.isnan(total):
                    mean = total / 9
                    out[i, j] = np.sqrt(max(square / 9 - mean * mean, 0.0))
                    continue
                total = 0.0
                square = 0.0
            count = 0
            for ii in range(max(i - 1, 0), min(i + 2, ny)):
                for jj in range(max(j - 1, 0), min(j + 2, nx)):
                    value = z[ii, jj]
                    if not np.isnan(value):
                        d = value - centre
                        total += d
                        square += d * d
                        count += 1
            mean = total / count
            out[i, j] = np.sqrt(max(square / count - mean * mean, 0.0))
    return out


@numba.njit(cache=True, parallel=True, nogil=True)
def integral(z, offset, with_count):
    """Summed-area tables of ``z - offset`` and of the valid-cell count (the count only ``with_count``).

    Row prefix sums in parallel over rows, then the running sum down the columns in parallel
    over column blocks: the same additions as a single raster pass, so the same numbers.
    """
    ny, nx = z.shape
    total = np.empty((ny + 1, nx + 1))
    count = np.empty((ny + 1, nx + 1) if with_count else (1, 1))
    total[0, :] = 0.0
    if with_count:
        count[0, :] = 0.0
    for i in numba.prange(ny):
        row_total = 0.0
        row_count = 0.0
        total[i + 1, 0] = 0.0
        if with_count:
            count[i + 1, 0] = 0.0
        for j in range(nx):
            value = z[i, j]
            if not np.isnan(value):
                row_total += value - offset
                row_count += 1.0
            total[i + 1, j + 1] = row_total
            if with_count:
                count[i + 1, j + 1] = row_count
    block = 512
    for b in numba.prange((nx + block - 1) // block):
        low = 1 + b * block
        high = min(low + block, nx + 1)
        for i in range(1, ny + 1):
            for j in range(low, high):
                total[i, j] = total[i - 1, j] + total[i, j]
                if with_count:
                    count[i, j] = count[i - 1, j] + count[i, j]
    return total, count


@numba.njit(cache=True, parallel=True, nogil=True)
def position(z, offset, total, count, half_rows, half_cols):
    """Elevation minus the window mean; ``count`` of shape (1, 1) means the grid has no gaps."""
    ny, nx = z.shape
    gaps = count.shape[0] > 1
    out = np.empty((ny, nx))
    for i in numba.prange(ny):
        top = max(i - half_rows, 0)
        bottom = min(i + half_rows + 1, ny)
        for j in range(nx):
            if np.isnan(z[i, j]):
                out[i, j] = np.nan
                continue
            left = max(j - half_cols, 0)
            right = min(j + half_cols + 1, nx)
            s = total[bottom, right] - total[top, right] - total[bottom, left] + total[top, left]
            if gaps:
                c = count[bottom, right] - count[top, right] - count[bottom, left] + count[top, left]
            else:
                c = float((bottom - top) * (right - left))
            out[i, j] = (z[i, j] - offset) - s / c
    return out


@numba.njit(cache=True, inline="always")
def _heap_push(heap_key, heap_cell, size, key, cell):
    pos = size
    while pos > 0:
        parent = (pos - 1) // 2
        if heap_key[parent] <= key:
            break
        heap_key[pos] = heap_key[parent]
        heap_cell[pos] = heap_cell[parent]
        pos = parent
    heap_key[pos] = key
    heap_cell[pos] = cell
    return size + 1


def route(z):
    """Priority-flood D8 routing (Barnes et al. 2014, with the FIFO queue for depressions and flats).

    Returns ``receiver`` (flat index of the cell each cell drains to, -1 for outlets) and
    ``order`` (cells in processing order: every receiver comes before its donors).

    The FIFO queue of flooded cells lives in ``order`` itself: a cell is written there when it
    is queued, and the heap is only popped when that queue is empty, so the processing order
    is the same as with a separate queue, and all its cells share the level of the last cell
    taken from the heap. Releases the GIL, so it can run while other kernels work. Indices are
    int32 when the grid has fewer than 2**31 cells: half the memory to fault in and to read.
    """
    index = np.int32 if z.size < 2**31 - 1 else np.int64
    receiver = np.full(z.size, -1, index)
    order = np.empty(z.size, index)
    count = _route(z, receiver, order)
    return receiver, order[:count]


@numba.njit(cache=True, nogil=True)
def _route(z, receiver, order):
    ny, nx = z.shape
    n = ny * nx
    closed = np.zeros(n, np.bool_)
    # The heap holds the flood front only; it grows when needed (a front of n cells is rare).
    heap_key = np.empty(min(n, 1 << 16) + 1, np.float64)
    heap_cell = np.empty(heap_key.size, order.dtype)
    size = 0
    drow = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
    dcol = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
    # Seeds: valid cells on the grid edge or next to a missing cell drain out of the grid.
    for i in range(ny):
        for j in range(nx):
            if np.isnan(z[i, j]):
                continue
            seed = i == 0 or j == 0 or i == ny - 1 or j == nx - 1
            if not seed:
                for k in range(8):
                    if np.isnan(z[i + drow[k], j + dcol[k]]):
                        seed = True
                        break
            if seed:
                c = i * nx + j
                closed[c] = True
                if size == heap_key.size:
                    heap_key, heap_cell = _grow(heap_key, heap_cell)
                size = _heap_push(heap_key, heap_cell, size, z[i, j], c)
    head = 0  # next queued cell of order to process
    tail = 0  # cells written to order
    level = -np.inf
    while True:
        if head == tail:
            if size == 0:
                break
            c = heap_cell[0]
            level = heap_key[0]
            size -= 1
            last_key = heap_key[size]
            last_cell = heap_cell[size]
            pos = 0
            while True:
                child = 2 * pos + 1
                if child >= size:
                    break
                other = child + 1
                if other < size and heap_key[other] < heap_key[child]:
                    child = other
                if heap_key[child] >= last_key:
                    break
                heap_key[pos] = heap_key[child]
                heap_cell[pos] = heap_cell[child]
                pos = child
            if size > 0:
                heap_key[pos] = last_key
                heap_cell[pos] = last_cell
            order[tail] = c
            tail += 1
        c = order[head]
        head += 1
        i = c // nx
        j = c - i * nx
        for k in range(8):
            ii = i + drow[k]
            jj = j + dcol[k]
            if ii < 0 or jj < 0 or ii >= ny or jj >= nx:
                continue
            nb = ii * nx + jj
            if closed[nb]:
                continue
            zn = z[ii, jj]
            if np.isnan(zn):
                continue
            closed[nb] = True
            receiver[nb] = c
            if zn <= level:
                # In a depression or on a flat: flooded to the spill level, drains through it.
                order[tail] = nb
                tail += 1
            else:
                if size == heap_key.size:
                    heap_key, heap_cell = _grow(heap_key, heap_cell)
                size = _heap_push(heap_key, heap_cell, size, zn, nb)
    return tail


@numba.njit(cache=True)
def _grow(heap_key, heap_cell):
    bigger_key = np.empty(2 * heap_key.size, np.float64)
    bigger_cell = np.empty(2 * heap_cell.size, heap_cell.dtype)
    bigger_key[: heap_key.size] = heap_key
    bigger_cell[: heap_cell.size] = heap_cell
    return bigger_key, bigger_cell


@numba.njit(cache=True, nogil=True)
def accumulate(weights, receiver, order):
    total = weights.copy()
    for index in range(order.size - 1, -1, -1):
        c = order[index]
        r = receiver[c]
        if r >= 0:
            total[r] += total[c]
    return total


@numba.njit(cache=True, nogil=True)
def accumulate_rows(row_weight, receiver, order, nx):
    """``accumulate`` with the weight of every cell of row i equal to ``row_weight[i]``; NaN off ``order``."""
    total = np.full(receiver.size, np.nan)
    for index in range(order.size):
        c = order[index]
        total[c] = row_weight[c // nx]
    for index in range(order.size - 1, -1, -1):
        c = order[index]
        r = receiver[c]
        if r >= 0:
            total[r] += total[c]
    return total


@numba.njit(cache=True, parallel=True, nogil=True)
def wetness(area, row_width, tan_slope, min_tan_slope):
    """``ln(area / width / max(tan_slope, min_tan_slope))`` written over ``area`` (flat), NaN stays NaN."""
    ny, nx = tan_slope.shape
    for i in numba.prange(ny):
        width = row_width[i]
        for j in range(nx):
            c = i * nx + j
            area[c] = np.log(area[c] / width / max(tan_slope[i, j], min_tan_slope))
    return area.reshape((ny, nx))
