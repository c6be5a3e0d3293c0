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


@numba.njit(cache=True, parallel=True)
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
                profile[i, j] = -(p2 * r + 2.0 * p * q * s + q2 * t) / (
                    gradient2 * one_plus * np.sqrt(one_plus)
                )
                plan[i, j] = -(q2 * r - 2.0 * p * q * s + p2 * t) / (gradient2 * np.sqrt(gradient2))
            else:
                profile[i, j] = 0.0
                plan[i, j] = 0.0
    return tan_slope, north, east, profile, plan, slope


@numba.njit(cache=True, parallel=True)
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


@numba.njit(cache=True)
def integral(z, offset):
    ny, nx = z.shape
    total = np.zeros((ny + 1, nx + 1))
    count = np.zeros((ny + 1, nx + 1))
    for i in range(ny):
        row_total = 0.0
        row_count = 0.0
        for j in range(nx):
            if not np.isnan(z[i, j]):
                row_total += z[i, j] - offset
                row_count += 1.0
            total[i + 1, j + 1] = total[i, j + 1] + row_total
            count[i + 1, j + 1] = count[i, j + 1] + row_count
    return total, count


@numba.njit(cache=True, parallel=True)
def position(z, offset, total, count, half_rows, half_cols):
    ny, nx = z.shape
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
            c = count[bottom, right] - count[top, right] - count[bottom, left] + count[top, left]
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


@numba.njit(cache=True)
def route(z):
    """Priority-flood D8 routing (Barnes et al. 2014, with the FIFO queue for depressions and flats).

    Returns ``receiver`` (flat index of the cell each cell drains to, -1 for outlets) and
    ``order`` (cells in processing order: every receiver comes before its donors).
    """
    ny, nx = z.shape
    n = ny * nx
    receiver = np.full(n, -1, np.int64)
    order = np.empty(n, np.int64)
    closed = np.zeros(n, np.bool_)
    heap_key = np.empty(n, np.float64)
    heap_cell = np.empty(n, np.int64)
    pit_cell = np.empty(n, np.int64)
    pit_level = np.empty(n, np.float64)
    size = 0
    pit_head = 0
    pit_tail = 0
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
                size = _heap_push(heap_key, heap_cell, size, z[i, j], c)
    count = 0
    while size > 0 or pit_head < pit_tail:
        if pit_head < pit_tail:
            # Cells at or below the current spill level come first, in FIFO order, so that
            # flats and filled depressions drain along the shortest path to their outlet.
            c = pit_cell[pit_head]
            level = pit_level[pit_head]
            pit_head += 1
        else:
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
        order[count] = c
        count += 1
        i = c // nx
        j = c - i * nx
        for k in range(8):
            ii = i + drow[k]
            jj = j + dcol[k]
            if ii < 0 or jj < 0 or ii >= ny or jj >= nx:
                continue
            nb = ii * nx + jj
            if closed[nb] or np.isnan(z[ii, jj]):
                continue
            closed[nb] = True
            receiver[nb] = c
            if z[ii, jj] <= level:
                # In a depression or on a flat: flooded to the spill level, drains through it.
                pit_cell[pit_tail] = nb
                pit_level[pit_tail] = level
                pit_tail += 1
            else:
                size = _heap_push(heap_key, heap_cell, size, z[ii, jj], nb)
    return receiver, order[:count]


@numba.njit(cache=True)
def accumulate(weights, receiver, order):
    total = weights.copy()
    for index in range(order.size - 1, -1, -1):
        c = order[index]
        r = receiver[c]
        if r >= 0:
            total[r] += total[c]
    return total
