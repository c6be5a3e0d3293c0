"""Compiled (numba) kernels of the terrain features: 3 x 3 derivatives, roughness, summed areas, D8 routing.

Kept apart so that they are compiled at module level, where numba's on-disk cache works:
the first import after installation compiles them once (a few seconds); later imports load them.
Each kernel computes exactly what the numpy reference code in :mod:`downscale.covariates.dem`
computes (tests compare the two).
"""

import numba
import numpy as np

from .._parallel import parallel_kernel


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


@parallel_kernel
def terrain(z, step_north, step_east, horn, dtype):
    """Slope (tangent and degrees), northness, eastness and both curvatures, computed in float64, stored as ``dtype``."""
    ny, nx = z.shape
    tan_slope = np.empty((ny, nx), dtype)
    north = np.empty((ny, nx), dtype)
    east = np.empty((ny, nx), dtype)
    profile = np.empty((ny, nx), dtype)
    plan = np.empty((ny, nx), dtype)
    slope = np.empty((ny, nx), dtype)
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


@parallel_kernel
def roughness(z, dtype):
    ny, nx = z.shape
    out = np.empty((ny, nx), dtype)
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


@parallel_kernel
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


@parallel_kernel
def position(z, offset, total, count, half_rows, half_cols, dtype):
    """Elevation minus the window mean; ``count`` of shape (1, 1) means the grid has no gaps."""
    ny, nx = z.shape
    gaps = count.shape[0] > 1
    out = np.empty((ny, nx), dtype)
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


# --------------------------------------------------------------------------- D8 routing
#
# Each cell drains to its steepest downhill neighbour (D8, O'Callaghan and Mark 1984). Cells on the
# grid edge or next to a missing cell drain out of the grid (outlets); cells with no lower
# neighbour are pits. Following the receivers splits the grid into basins, one per outlet or pit.
# A pit's basin drains through its lowest pass to a basin that drains out: the basins are joined
# outward from the outlets in order of pass height (Prim's algorithm on the graph of neighbouring
# basins, each edge weighted by the lower of the heights of its two sides at the pass, i.e. the
# spill height), and the steepest-descent path from the pass down to the pit is reversed, so the
# pit breaches through the pass instead of swallowing its flow. Every step but the ordered join
# sweeps the grid, so the routing reads memory mostly in order.

D8_ROWS = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
D8_COLS = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
MISSING = -1  # receiver codes of cells that drain nowhere in the grid
OUTLET = -2
PIT = -3


def route(z, step_east, step_north):
    """D8 receivers of a DEM, depressions breached through their lowest pass.

    Parameters
    ----------
    z : ndarray (ny, nx), float64
        Elevation; NaN where missing.
    step_east : ndarray (ny,)
        Distance in metres between neighbouring columns of every row.
    step_north : float
        Distance in metres between neighbouring rows.

    Returns
    -------
    receiver : ndarray (ny * nx,), int32
        Flat index of the cell each cell drains to; -1 for outlets (the grid edge and cells next to
        missing ones, which drain out of the grid) and missing cells.
    """
    receiver = finish_route(*start_route(z, step_east, step_north))
    receiver[receiver < 0] = -1
    return receiver


#: Cell indices are int32: half the memory of int64 for the routing's arrays of cell indices.
MAX_ROUTING_CELLS = 2**31 - 1


def start_route(z, step_east, step_north):
    """The parallel first half of :func:`route`: steepest receivers and basins. Pass the result to :func:`finish_route`."""
    if z.size > MAX_ROUTING_CELLS:
        raise ValueError(
            f"The flow routing indexes cells with 32-bit integers, so it takes at most {MAX_ROUTING_CELLS} "
            f"cells; this DEM has {z.shape[0]} x {z.shape[1]} = {z.size}. Coarsen the DEM, or compute the "
            f"wetness index by catchments that fit and merge them."
        )
    z = np.ascontiguousarray(z, dtype=np.float64)
    step_east = np.ascontiguousarray(np.abs(np.broadcast_to(np.ravel(step_east), (z.shape[0],))), np.float64)
    receiver = _steepest_receivers(z, step_east, abs(float(step_north)))
    return (z, receiver, *_label_basins(receiver, z.shape[1]))


def finish_route(z, receiver, label, n_basins, n_outlets):
    """The sequential second half of :func:`route`: join the basins and breach the pits (releases the GIL).

    Returns the receivers, negative (not only -1) where a cell drains nowhere in the grid.
    """
    start, members = _members_by_basin(label, n_basins)
    graph = _basin_graph(z, label, n_basins, start, members)
    del start, members
    _drain_basins(receiver, n_basins, n_outlets, *graph)
    return receiver


@parallel_kernel
def _steepest_receivers(z, step_east, step_north):
    """The steepest downhill neighbour of every cell (drop over distance), or MISSING/OUTLET/PIT."""
    ny, nx = z.shape
    receiver = np.empty(ny * nx, np.int32)
    for i in numba.prange(ny):
        diagonal = np.sqrt(step_east[i] ** 2 + step_north**2)
        for j in range(nx):
            c = i * nx + j
            zc = z[i, j]
            if np.isnan(zc):
                receiver[c] = MISSING
                continue
            if i == 0 or j == 0 or i == ny - 1 or j == nx - 1:
                receiver[c] = OUTLET
                continue
            steepest = 0.0
            target = PIT
            for k in range(8):
                di = D8_ROWS[k]
                dj = D8_COLS[k]
                zn = z[i + di, j + dj]
                if np.isnan(zn):
                    target = OUTLET
                    break
                if di == 0:
                    distance = step_east[i]
                elif dj == 0:
                    distance = step_north
                else:
                    distance = 0.5 * (diagonal + np.sqrt(step_east[i + di] ** 2 + step_north**2))
                drop = (zc - zn) / distance
                if drop > steepest:
                    steepest = drop
                    target = (i + di) * nx + (j + dj)
            receiver[c] = target
    return receiver


@parallel_kernel
def _label_basins(receiver, nx):
    """Basin of every cell (-1 if missing): outlets' basins are numbered first, then the pits'.

    Rows are labelled in parallel: a cell follows its receivers down to a labelled cell and labels
    the path on the way back. Two rows may label the same path at once; they write the same values.
    """
    n = receiver.size
    ny = n // nx
    label = np.empty(n, np.int32)
    outlets = np.zeros(ny + 1, np.int64)  # terminals of each row, then their running sums
    pits = np.zeros(ny + 1, np.int64)
    for i in numba.prange(ny):
        for c in range(i * nx, (i + 1) * nx):
            outlets[i + 1] += receiver[c] == OUTLET
            pits[i + 1] += receiver[c] == PIT
    for i in range(ny):
        outlets[i + 1] += outlets[i]
        pits[i + 1] += pits[i]
    n_outlets = outlets[ny]
    n_basins = n_outlets + pits[ny]
    for i in numba.prange(ny):  # terminals numbered in raster order, outlets first
        next_outlet = outlets[i]
        next_pit = n_outlets + pits[i]
        for c in range(i * nx, (i + 1) * nx):
            if receiver[c] == OUTLET:
                label[c] = next_outlet
                next_outlet += 1
            elif receiver[c] == PIT:
                label[c] = next_pit
                next_pit += 1
            else:
                label[c] = -1
    for i in numba.prange(ny):
        for c in range(i * nx, (i + 1) * nx):
            if receiver[c] == MISSING or label[c] >= 0:
                continue
            x = c
            while label[x] < 0:  # down to a labelled cell (at the latest the terminal outlet or pit)
                x = receiver[x]
            basin = label[x]
            x = c
            while label[x] < 0:
                label[x] = basin
                x = receiver[x]
    return label, n_basins, n_outlets


@numba.njit(cache=True, nogil=True)
def _members_by_basin(label, n_basins):
    """Cells of every basin, grouped: basin b's cells are ``members[start[b]:start[b + 1]]``."""
    start = np.zeros(n_basins + 1, np.int64)
    for c in range(label.size):
        if label[c] >= 0:
            start[label[c] + 1] += 1
    for b in range(n_basins):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    members = np.empty(start[n_basins], np.int32)
    for c in range(label.size):
        b = label[c]
        if b >= 0:
            members[fill[b]] = c
            fill[b] += 1
    return start, members


def _basin_graph(z, label, n_basins, start, members, n_chunks=None):
    """Neighbouring basins of every basin and the lowest pass to each.

    For basin b, edges ``g_first[b]:g_stop[b]`` give the neighbour basin, the spill height (the
    higher of the two cells at the pass), the cell on b's side and the cell on the other side.
    The basins are split into chunks of about equal numbers of cells (at most ``MAX_GRAPH_CHUNKS``,
    one per numba thread), built in parallel, each in its own part of the edge arrays. A chunk
    gets room for ``GRAPH_ROOM`` (8) edges per basin (6 is typical); in the rare case that one
    needs more, the graph is built again with twice the room. ``n_chunks`` (default: one per numba
    thread) changes how the work is split, not the graph.
    """
    if n_chunks is None:
        n_chunks = min(numba.get_num_threads(), MAX_GRAPH_CHUNKS)
    n_chunks = max(1, min(n_chunks, n_basins))
    room = GRAPH_ROOM
    while True:
        complete, *graph = _basin_graph_chunks(z, label, n_basins, start, members, n_chunks, room)
        if complete:
            return graph
        room *= 2


#: Most chunks the basin graph is split into (each needs two arrays of one integer per basin).
MAX_GRAPH_CHUNKS = 8

#: Edges a chunk of the basin graph first makes room for, per basin (doubled until they fit).
GRAPH_ROOM = 8


@parallel_kernel
def _basin_graph_chunks(z, label, n_basins, start, members, n_chunks, room):
    """:func:`_basin_graph` with ``room`` edges per basin of a chunk; first returns whether they sufficed."""
    ny, nx = z.shape
    zf = z.ravel()
    # Chunk k holds basins first[k]:first[k + 1], about equal numbers of cells.
    first = np.empty(n_chunks + 1, np.int64)
    for k in range(n_chunks + 1):
        first[k] = np.searchsorted(start[: n_basins + 1], start[n_basins] * k // n_chunks)
    first[0] = 0
    first[n_chunks] = n_basins
    capacity = room * n_basins + 16 * n_chunks
    g_first = np.empty(n_basins, np.int64)
    g_stop = np.empty(n_basins, np.int64)
    g_basin = np.empty(capacity, np.int32)
    g_spill = np.empty(capacity)
    g_inside = np.empty(capacity, np.int32)
    g_outside = np.empty(capacity, np.int32)
    seen_by = np.full((n_chunks, n_basins), -1, np.int32)  # the basin whose edges currently list this one
    slot = np.empty((n_chunks, n_basins), np.int32)  # where, counted from that basin's first edge
    overflow = np.zeros(n_chunks, np.bool_)
    for k in numba.prange(n_chunks):
        e = room * first[k] + 16 * k
        end = room * first[k + 1] + 16 * (k + 1)
        for b in range(first[k], first[k + 1]):
            g_first[b] = e
            for m in range(start[b], start[b + 1]):
                c = members[m]
                i = c // nx
                j = c - i * nx
                zc = zf[c]
                for d in range(8):
                    ii = i + D8_ROWS[d]
                    jj = j + D8_COLS[d]
                    if ii < 0 or jj < 0 or ii >= ny or jj >= nx:
                        continue
                    o = ii * nx + jj
                    other = label[o]
                    if other < 0 or other == b:
                        continue
                    spill = max(zc, zf[o])
                    if seen_by[k, other] != b:
                        if e == end:
                            overflow[k] = True
                            break
                        seen_by[k, other] = b
                        slot[k, other] = e - g_first[b]
                        g_basin[e] = other
                        g_spill[e] = spill
                        g_inside[e] = c
                        g_outside[e] = o
                        e += 1
                    else:
                        q = g_first[b] + slot[k, other]
                        if spill < g_spill[q]:
                            g_spill[q] = spill
                            g_inside[q] = c
                            g_outside[q] = o
                if overflow[k]:
                    break
            g_stop[b] = e
            if overflow[k]:
                break
    return not overflow.any(), g_first, g_stop, g_basin, g_spill, g_inside, g_outside


@numba.njit(cache=True, inline="always")
def _heap_push(keys, items, size, key, item):
    """Add ``item`` with ``key`` to a 4-ary min-heap of ``size`` entries; returns the new size."""
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 2
        if keys[parent] <= key:
            break
        keys[pos] = keys[parent]
        items[pos] = items[parent]
        pos = parent
    keys[pos] = key
    items[pos] = item
    return size + 1


@numba.njit(cache=True, inline="always")
def _heap_pop(keys, items, size):
    """Remove the smallest key of a 4-ary min-heap; returns its item and the new size."""
    top = items[0]
    size -= 1
    last_key = keys[size]
    last_item = items[size]
    pos = 0
    while True:
        first = 4 * pos + 1
        if first >= size:
            break
        child = first
        for other in range(first + 1, min(first + 4, size)):
            if keys[other] < keys[child]:
                child = other
        if keys[child] >= last_key:
            break
        keys[pos] = keys[child]
        items[pos] = items[child]
        pos = child
    if size > 0:
        keys[pos] = last_key
        items[pos] = last_item
    return top, size


@numba.njit(cache=True, nogil=True)
def _drain_basins(receiver, n_basins, n_outlets, g_first, g_stop, g_basin, g_spill, g_inside, g_outside):
    """Join every pit's basin to the drained ones through its lowest pass and breach the pit."""
    drained = np.zeros(n_basins, np.bool_)
    drained[:n_outlets] = True
    n_edges = 0
    for b in range(n_basins):
        n_edges += g_stop[b] - g_first[b]
    keys = np.empty(max(n_edges, 1))
    edges = np.empty(keys.size, np.int64)  # every edge is pushed at most once
    size = 0
    for b in range(n_outlets):
        for q in range(g_first[b], g_stop[b]):
            if not drained[g_basin[q]]:
                size = _heap_push(keys, edges, size, g_spill[q], q)
    while size > 0:
        q, size = _heap_pop(keys, edges, size)
        b = g_basin[q]
        if drained[b]:
            continue
        drained[b] = True
        # Reverse the steepest path from the pass down to the pit: the pit drains up it and out.
        downstream = g_inside[q]
        x = g_outside[q]
        while True:
            after = receiver[x]
            receiver[x] = downstream
            if after < 0:
                break
            downstream = x
            x = after
        for r in range(g_first[b], g_stop[b]):
            if not drained[g_basin[r]]:
                size = _heap_push(keys, edges, size, g_spill[r], r)


@numba.njit(cache=True, nogil=True)
def accumulate_rows(row_weight, receiver, z):
    """Upslope sum of the cell weights (``row_weight[i]`` for every cell of row i); NaN on missing cells.

    Every cell is added to its receiver once all its donors were added to it: walks start at
    cells without donors and go down until they reach a cell that still waits for a donor.
    """
    ny, nx = z.shape
    n = receiver.size
    donors = np.zeros(n, np.uint8)
    total = np.empty(n)
    for c in range(n):
        if np.isnan(z[c // nx, c % nx]):
            total[c] = np.nan
            continue
        total[c] = row_weight[c // nx]
        if receiver[c] >= 0:
            donors[receiver[c]] += 1
    done = np.uint8(255)
    for c in range(n):
        if donors[c] != 0 or np.isnan(total[c]):
            continue
        x = c
        while True:
            donors[x] = done
            r = receiver[x]
            if r < 0:
                break
            total[r] += total[x]
            donors[r] -= 1
            if donors[r] != 0:
                break
            x = r
    return total


@parallel_kernel
def wetness(area, row_width, tan_slope, min_tan_slope, dtype):
    """``ln(area / width / max(tan_slope, min_tan_slope))`` of the flat ``area``, as ``dtype``; NaN stays NaN."""
    ny, nx = tan_slope.shape
    out = np.empty((ny, nx), dtype)
    for i in numba.prange(ny):
        width = row_width[i]
        for j in range(nx):
            out[i, j] = np.log(area[i * nx + j] / width / max(np.float64(tan_slope[i, j]), min_tan_slope))
    return out
