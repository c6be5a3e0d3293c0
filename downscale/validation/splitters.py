"""Spatial cross-validation splitters: square blocks, buffered leave-one-out, and kNNDM folds.

Random K-fold on spatially autocorrelated samples puts near-copies of every
test point in the training set and overstates skill. These splitters keep
neighbours apart. They follow the scikit-learn splitter interface
(``split(X, y=None, groups=None)`` yielding ``(train_index, test_index)``,
``get_n_splits``), so they can be passed as ``cv=`` to
:func:`sklearn.model_selection.cross_val_score`, and they read coordinates
from what ``X`` is:

- a table (pandas DataFrame) with ``x`` and ``y`` columns (or index levels),
- a GeoDataFrame of points in a projected CRS,
- a :class:`downscale.grid.PixelTable` (pixel coordinates come from its grid),
- an ``(n, 2)`` array of ``(x, y)`` coordinates.

Coordinates are in metres (projected CRS). Rows that share a location (the
same pixel or station at several times) always fall in the same fold.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

__all__ = ["BufferedLeaveOneOut", "KNNDMKFold", "SpatialBlockKFold", "coordinates_of"]


def coordinates_of(X, name: str = "X") -> np.ndarray:
    """Return the ``(n, 2)`` array of ``(x, y)`` coordinates (metres) of the samples in ``X``.

    Parameters
    ----------
    X : pandas.DataFrame, geopandas.GeoDataFrame, downscale.grid.PixelTable, xarray object or array
        A table with ``x``/``y`` columns or index levels; points with a projected CRS; a pixel
        table; a grid (its cells with a finite value); or an ``(n, 2)`` array.
    name : str
        How ``X`` is named in error messages.

    Examples
    --------
    >>> import pandas as pd
    >>> coordinates_of(pd.DataFrame({"x": [0.0, 10.0], "y": [5.0, 5.0], "t": [1, 2]})).tolist()
    [[0.0, 5.0], [10.0, 5.0]]
    """
    from ..grid import PixelTable

    if isinstance(X, PixelTable):
        template = X.template
        _refuse_geographic(template, name)
        yy, xx = np.meshgrid(template["y"].values, template["x"].values, indexing="ij")
        shape = X.mask.shape
        coords = np.column_stack(
            [np.broadcast_to(xx, shape)[X.mask], np.broadcast_to(yy, shape)[X.mask]]
        ).astype(np.float64)
    elif hasattr(X, "geometry") and hasattr(X, "crs"):
        crs = X.crs
        if crs is not None and crs.is_geographic:
            raise ValueError(
                f"{name} has geographic coordinates ({crs.name}); distances and block sizes are in "
                f"metres. Reproject the points first, e.g. `{name}.to_crs({name}.estimate_utm_crs())`."
            )
        geometry = X.geometry
        if len(geometry) and not (geometry.geom_type == "Point").all():
            raise ValueError(f"{name} must hold point geometries; it has {sorted(set(geometry.geom_type))}.")
        coords = np.column_stack([geometry.x.to_numpy(), geometry.y.to_numpy()]).astype(np.float64)
    elif isinstance(X, pd.DataFrame):
        if {"x", "y"} <= set(X.columns):
            coords = X[["x", "y"]].to_numpy(dtype=np.float64)
        elif {"x", "y"} <= set(X.index.names):
            coords = np.column_stack(
                [X.index.get_level_values("x").to_numpy(), X.index.get_level_values("y").to_numpy()]
            ).astype(np.float64)
        else:
            raise ValueError(
                f"{name} is a table without 'x' and 'y' columns, so the sample locations are unknown. "
                f"Add them (e.g. `{name}.assign(x=..., y=...)`), or pass a GeoDataFrame or an (n, 2) "
                f"array of coordinates."
            )
    elif hasattr(X, "dims") and hasattr(X, "coords"):
        coords = _grid_coordinates(X, name)
    else:
        coords = np.asarray(X, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(
                f"{name} must be an (n, 2) array of (x, y) coordinates, a table with 'x'/'y' columns or a "
                f"GeoDataFrame of points; got an array of shape {coords.shape}."
            )
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{name} has missing (NaN) coordinates; drop those rows first.")
    return coords


def _grid_coordinates(grid, name):
    """Cell centres of a grid where it has a finite value (every cell for a coordinates-only Dataset)."""
    import xarray as xr

    from ..grid import check_grid

    check_grid(grid, name=name)
    _refuse_geographic(grid, name)
    if isinstance(grid, xr.Dataset):
        arrays = [da for da in grid.data_vars.values() if {"y", "x"} <= set(da.dims)]
    else:
        arrays = [grid]
    valid = np.ones((grid.sizes["y"], grid.sizes["x"]), dtype=bool)
    for da in arrays:
        finite = np.isfinite(da.transpose(..., "y", "x").values.astype(np.float64))
        valid &= finite.reshape(-1, *valid.shape).any(axis=0)
    yy, xx = np.meshgrid(grid["y"].values, grid["x"].values, indexing="ij")
    return np.column_stack([xx[valid], yy[valid]]).astype(np.float64)


def _refuse_geographic(grid, name):
    from ..grid import is_geographic

    if is_geographic(grid):
        raise ValueError(
            f"{name} is on a geographic (lat/lon) grid; distances and block sizes are in metres. "
            f"Work on a projected grid (e.g. `grid.rio.reproject(grid.rio.estimate_utm_crs())`)."
        )


def _unique_locations(coords):
    """Unique locations and, for every row, the index of its location."""
    locations, inverse = np.unique(coords, axis=0, return_inverse=True)
    return locations, inverse.ravel()


def _check_n_splits(n_splits):
    if not isinstance(n_splits, numbers.Integral) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer of at least 2, got {n_splits!r}.")
    return int(n_splits)


def _check_enough(n_locations, n_splits, what="locations"):
    if n_locations < n_splits:
        raise ValueError(
            f"Cannot make {n_splits} folds from {n_locations} distinct {what}: every fold needs at least "
            f"one. Use fewer folds (n_splits={max(n_locations, 2)}) or BufferedLeaveOneOut."
        )


def _cv_distances(coords, labels):
    """Distance from every point to its nearest neighbour in the other folds (test-to-train NND)."""
    from scipy.spatial import cKDTree

    distances = np.full(len(coords), np.inf)
    for fold in np.unique(labels):
        test = labels == fold
        if test.all():
            continue
        distances[test] = cKDTree(coords[~test]).query(coords[test], k=1)[0]
    return distances


def _balanced_assignment(sizes, n_splits, rng):
    """Assign groups of the given sizes to folds so fold sizes are balanced (largest first, random ties)."""
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-np.asarray(sizes)[order], kind="stable")]
    fold_of = np.empty(len(sizes), dtype=np.int64)
    totals = np.zeros(n_splits)
    for group in order:
        fold = int(np.argmin(totals))
        fold_of[group] = fold
        totals[fold] += sizes[group]
    return fold_of


class _SpatialSplitter(BaseCrossValidator):
    """Shared machinery: ``fold_labels`` gives one fold per sample; ``split`` yields the indices."""

    def fold_labels(self, X):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _buffer(self):
        return 0.0

    def split(self, X, y=None, groups=None):
        """Yield ``(train_index, test_index)`` for each fold.

        Parameters
        ----------
        X : table with x/y, GeoDataFrame of points, PixelTable or (n, 2) array
            The samples, located by their coordinates.
        y, groups : ignored
            Present for scikit-learn compatibility.
        """
        coords = coordinates_of(X)
        labels = self.fold_labels(coords)
        buffer = float(self._buffer())
        for fold in range(int(labels.max()) + 1):
            test = np.flatnonzero(labels == fold)
            train = np.flatnonzero(labels != fold)
            if test.size == 0:
                continue
            if buffer > 0 and train.size:
                from scipy.spatial import cKDTree

                near = cKDTree(coords[test]).query(coords[train], k=1, distance_upper_bound=buffer)[0]
                train = train[~np.isfinite(near) | (near > buffer)]
            if train.size == 0:
                raise ValueError(
                    f"Fold {fold} has no training samples left once those within the buffer of "
                    f"{buffer:g} m of its test samples are removed. Use a smaller buffer or block_size."
                )
            yield train, test

    def _iter_test_indices(self, X=None, y=None, groups=None):  # required by BaseCrossValidator
        for _, test in self.split(X, y, groups):
            yield test


class SpatialBlockKFold(_SpatialSplitter):
    """K-fold cross-validation over square spatial blocks.

    The plane is cut into square blocks of ``block_size`` metres (starting at
    the smallest x and y of the samples). Whole blocks are assigned to folds,
    largest first, each to the fold with the fewest samples so far, which
    balances the folds by sample count; ties are broken at random
    (``random_state``). With ``buffer > 0`` the training samples within
    ``buffer`` metres of any test sample are removed from each split.

    Parameters
    ----------
    n_splits : int, default 5
    block_size : float, optional
        Side of the blocks in metres. Default: the larger side of the samples'
        extent divided by ``n_splits``, which gives about ``n_splits**2``
        blocks (five per fold) on a square domain. For a robust estimate use at
        least the range of the residuals' variogram.
    buffer : float, default 0
        Exclusion distance (metres) between test samples and training samples.
    random_state : int, default 0
        Seed for the order of equal-size blocks.

    Examples
    --------
    >>> import numpy as np
    >>> xx, yy = np.meshgrid(np.arange(10) * 1000.0, np.arange(10) * 1000.0)
    >>> coords = np.column_stack([xx.ravel(), yy.ravel()])
    >>> cv = SpatialBlockKFold(n_splits=4, block_size=5000.0)
    >>> [len(test) for _, test in cv.split(coords)]
    [25, 25, 25, 25]
    """

    def __init__(self, n_splits=5, block_size=None, buffer=0.0, random_state=0):
        self.n_splits = n_splits
        self.block_size = block_size
        self.buffer = buffer
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of folds (``n_splits``)."""
        return _check_n_splits(self.n_splits)

    def _buffer(self):
        if self.buffer is None or self.buffer < 0:
            raise ValueError(f"buffer must be a distance in metres >= 0, got {self.buffer!r}.")
        return self.buffer

    def block_size_for(self, X) -> float:
        """The block size (metres) used for the samples ``X``: ``block_size`` or the documented default."""
        coords = coordinates_of(X)
        if self.block_size is not None:
            if not self.block_size > 0:
                raise ValueError(
                    f"block_size must be a positive distance in metres, got {self.block_size!r}."
                )
            return float(self.block_size)
        extent = float(np.max(coords.max(axis=0) - coords.min(axis=0))) if len(coords) else 0.0
        n_splits = _check_n_splits(self.n_splits)
        # A hair more than extent / n so the samples on the far edge fall in the last block.
        return extent / n_splits * (1 + 1e-9) if extent > 0 else 1.0

    def fold_labels(self, X) -> np.ndarray:
        """Fold index (0 .. n_splits - 1) of every sample.

        Raises
        ------
        ValueError
            With fewer distinct locations, or fewer non-empty blocks, than folds.
        """
        n_splits = _check_n_splits(self.n_splits)
        coords = coordinates_of(X)
        locations, inverse = _unique_locations(coords)
        _check_enough(len(locations), n_splits)
        size = self.block_size_for(coords)
        cells = np.floor((coords - coords.min(axis=0)) / size).astype(np.int64)
        blocks, block_of = np.unique(cells, axis=0, return_inverse=True)
        block_of = block_of.ravel()
        if len(blocks) < n_splits:
            raise ValueError(
                f"Only {len(blocks)} blocks of {size:g} m contain samples, fewer than n_splits={n_splits}. "
                f"Use a smaller block_size (e.g. {size / 2:g}) or fewer folds."
            )
        sizes = np.bincount(block_of, minlength=len(blocks))
        fold_of_block = _balanced_assignment(sizes, n_splits, np.random.default_rng(self.random_state))
        return fold_of_block[block_of]


class BufferedLeaveOneOut(_SpatialSplitter):
    """Leave-one-location-out cross-validation with an exclusion radius.

    Each split tests one location (all rows at it, e.g. one station at all
    times) and trains on the locations farther than ``radius`` metres away.
    With ``radius=0`` this is plain leave-one-location-out.

    Parameters
    ----------
    radius : float, default 0
        Training locations within this distance (metres) of the test location are left out.

    Examples
    --------
    >>> import numpy as np
    >>> coords = np.array([[0.0, 0.0], [1000.0, 0.0], [5000.0, 0.0]])
    >>> [(train.tolist(), test.tolist()) for train, test in BufferedLeaveOneOut(radius=1500).split(coords)]
    [([2], [0]), ([2], [1]), ([0, 1], [2])]
    """

    def __init__(self, radius=0.0):
        self.radius = radius

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of distinct locations in ``X`` (``X`` is required)."""
        if X is None:
            raise ValueError("BufferedLeaveOneOut.get_n_splits needs X: there is one split per location.")
        return len(_unique_locations(coordinates_of(X))[0])

    def fold_labels(self, X) -> np.ndarray:
        """Index of every sample's location (one fold per location)."""
        return _unique_locations(coordinates_of(X))[1]

    def split(self, X, y=None, groups=None):
        """Yield ``(train_index, test_index)``, one split per location; see the class docstring."""
        from scipy.spatial import cKDTree

        if self.radius is None or self.radius < 0:
            raise ValueError(f"radius must be a distance in metres >= 0, got {self.radius!r}.")
        coords = coordinates_of(X)
        locations, inverse = _unique_locations(coords)
        if len(locations) < 2:
            raise ValueError(f"Leave-one-out needs at least 2 distinct locations; X has {len(locations)}.")
        tree = cKDTree(locations)
        rows_of = [np.flatnonzero(inverse == i) for i in range(len(locations))]
        for i, location in enumerate(locations):
            excluded = np.zeros(len(locations), dtype=bool)
            excluded[tree.query_ball_point(location, r=float(self.radius))] = True
            excluded[i] = True
            if excluded.all():
                raise ValueError(
                    f"With radius={self.radius:g} m the location {location.tolist()} has no training "
                    f"location left (every other one is within the radius). Use a smaller radius."
                )
            train = np.flatnonzero(~excluded[inverse])
            yield train, rows_of[i]


class KNNDMKFold(_SpatialSplitter):
    """k-fold nearest-neighbour distance matching (kNNDM) cross-validation, Linnenbrink et al. (2024).

    The folds are chosen so that the distribution of distances from each test
    sample to its nearest training sample (``Gj*``) matches the distribution
    of distances from the prediction locations to their nearest training
    sample (``Gij``): cross-validation then mimics the extrapolation distance
    of the actual prediction task, neither more optimistic (random folds on
    clustered samples) nor more pessimistic (oversized blocks).

    Algorithm (as in the reference implementation, ``CAST::knndm``):

    1. ``Gij`` from the prediction locations (a random sample of
       ``sample_size``), ``Gj`` the leave-one-out nearest-neighbour distances of
       the training locations.
    2. If a one-sided Kolmogorov-Smirnov test does not show ``Gj`` to be smaller
       than ``Gij`` (p >= 0.05), prediction is interpolation and random folds
       are used.
    3. Otherwise the training locations are clustered (k-means or Ward
       hierarchical) into ``q`` clusters for ``n_candidates`` values of ``q``
       from ``n_splits`` to ``N - 2`` (log-spaced); clusters holding at least
       ``N / n_splits`` locations get a fold of their own, the others are
       merged into the remaining folds in the order of their centroids along
       the first principal axis. Configurations whose largest fold holds more
       than ``max_fraction`` of the locations are discarded.
    4. The configuration with the smallest Wasserstein distance ``W`` between
       ``Gj*`` and ``Gij`` is kept. Random folds are also a candidate, so the
       result never matches worse than random K-fold.

    After :meth:`split` (or :meth:`fold_labels`), the fitted attributes are
    ``wasserstein_`` (W of the chosen folds), ``wasserstein_random_`` (W of
    random folds), ``n_clusters_`` (the chosen ``q``, or ``"random"``) and
    ``distances_`` (dict of ``prediction``, ``leave_one_out``,
    ``test_to_train`` and ``random`` nearest-neighbour distances, in metres).

    Parameters
    ----------
    n_splits : int, default 5
    prediction_points : table, GeoDataFrame, (m, 2) array or grid
        Where the model will predict, e.g. the fine grid (its cells with a finite value).
    max_fraction : float, default 0.5
        Largest share of the locations one fold may hold (``maxp``), strictly between ``1 / n_splits`` and 1.
    clustering : {"kmeans", "hierarchical"}
        Ward hierarchical clustering needs the full distance matrix (fine up to a few thousand locations).
    n_candidates : int, default 30
        Number of cluster counts ``q`` tried.
    sample_size : int, default 1000
        Prediction locations are subsampled to this many.
    random_state : int, default 0

    References
    ----------
    Linnenbrink, J., Milà, C., Ludwig, M. and Meyer, H. (2024). kNNDM CV: k-fold nearest-neighbour
    distance matching cross-validation for map accuracy estimation. Geosci. Model Dev. 17, 5897-5912,
    doi:10.5194/gmd-17-5897-2024.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.uniform(0, 100_000, size=(5, 2))
    >>> train = np.concatenate([c + rng.normal(0, 2000, size=(20, 2)) for c in centres])
    >>> grid = np.column_stack([g.ravel() for g in np.meshgrid(np.arange(0, 1e5, 2e3), np.arange(0, 1e5, 2e3))])
    >>> cv = KNNDMKFold(n_splits=5, prediction_points=grid)
    >>> folds = list(cv.split(train))
    >>> bool(cv.wasserstein_ < cv.wasserstein_random_)
    True
    """

    def __init__(
        self,
        n_splits=5,
        prediction_points=None,
        max_fraction=0.5,
        clustering="kmeans",
        n_candidates=30,
        sample_size=1000,
        random_state=0,
    ):
        self.n_splits = n_splits
        self.prediction_points = prediction_points
        self.max_fraction = max_fraction
        self.clustering = clustering
        self.n_candidates = n_candidates
        self.sample_size = sample_size
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of folds (``n_splits``)."""
        return _check_n_splits(self.n_splits)

    def _prediction_coordinates(self, rng):
        if self.prediction_points is None:
            raise ValueError(
                "KNNDMKFold needs the prediction locations: pass prediction_points= the fine grid "
                "(or a table / (m, 2) array of the pixel coordinates where the model will predict)."
            )
        coords = coordinates_of(self.prediction_points, name="prediction_points")
        if len(coords) == 0:
            raise ValueError("prediction_points holds no location (is the grid all NaN?).")
        if len(coords) > self.sample_size:
            coords = coords[rng.choice(len(coords), size=int(self.sample_size), replace=False)]
        return coords

    def _cluster(self, locations, n_clusters, rng, linkage=None):
        if self.clustering == "hierarchical":
            from scipy.cluster.hierarchy import fcluster

            return fcluster(linkage, t=n_clusters, criterion="maxclust") - 1
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=n_clusters, n_init=1, random_state=int(rng.integers(2**31 - 1)))
        return model.fit_predict(locations)

    def _merge(self, locations, clusters, n_splits, axis):
        """CAST's merge: big clusters keep their own fold, the rest are dealt round-robin along PC1."""
        ids, sizes = np.unique(clusters, return_counts=True)
        centroids = np.array([locations[clusters == c].mean(axis=0) for c in ids])
        order = np.argsort(centroids @ axis, kind="stable")
        fold_of = np.full(len(ids), -1)
        next_fold = 0
        for i in order:
            if sizes[i] >= len(locations) / n_splits and next_fold < n_splits:
                fold_of[i] = next_fold
                next_fold += 1
        remaining = list(range(next_fold, n_splits)) or list(range(n_splits))
        small = [i for i in order if fold_of[i] < 0]
        for j, i in enumerate(small):
            fold_of[i] = remaining[j % len(remaining)]
        lookup = dict(zip(ids, fold_of, strict=True))
        return np.array([lookup[c] for c in clusters])

    def fold_labels(self, X) -> np.ndarray:
        """Fold index (0 .. n_splits - 1) of every sample; also sets the fitted attributes."""
        from scipy.spatial import cKDTree
        from scipy.stats import ks_2samp, wasserstein_distance

        n_splits = _check_n_splits(self.n_splits)
        if not 1.0 / n_splits < self.max_fraction < 1.0:
            raise ValueError(
                f"max_fraction must be strictly between 1/n_splits = {1 / n_splits:.3g} and 1, "
                f"got {self.max_fraction!r}."
            )
        if self.clustering not in ("kmeans", "hierarchical"):
            raise ValueError(f"clustering must be 'kmeans' or 'hierarchical', got {self.clustering!r}.")
        rng = np.random.default_rng(self.random_state)
        coords = coordinates_of(X)
        locations, inverse = _unique_locations(coords)
        n = len(locations)
        _check_enough(n, n_splits)
        prediction = self._prediction_coordinates(rng)
        tree = cKDTree(locations)
        g_ij = tree.query(prediction, k=1)[0]
        g_j = tree.query(locations, k=2)[0][:, 1]

        random_labels = rng.permutation(np.arange(n) % n_splits)
        g_random = _cv_distances(locations, random_labels)
        w_random = float(wasserstein_distance(g_random, g_ij))
        best = (w_random, "random", random_labels, g_random)

        interpolation = ks_2samp(g_j, g_ij, alternative="greater").pvalue >= 0.05
        if not interpolation and n - 2 > n_splits:
            counts = np.exp(np.linspace(np.log(n_splits), np.log(n - 2), int(self.n_candidates)))
            counts = np.unique(np.round(counts).astype(int))
            centred = locations - locations.mean(axis=0)
            axis = np.linalg.svd(centred, full_matrices=False)[2][0] if n > 1 else np.array([1.0, 0.0])
            linkage = None
            if self.clustering == "hierarchical":
                from scipy.cluster.hierarchy import ward

                linkage = ward(locations)
            for q in counts:
                clusters = self._cluster(locations, int(q), rng, linkage)
                labels = self._merge(locations, clusters, n_splits, axis)
                fold_sizes = np.bincount(labels, minlength=n_splits)
                if (fold_sizes == 0).any() or fold_sizes.max() / n > self.max_fraction:
                    continue
                g_star = _cv_distances(locations, labels)
                w = float(wasserstein_distance(g_star, g_ij))
                if w < best[0]:
                    best = (w, int(q), labels, g_star)
        self.wasserstein_, self.n_clusters_, labels, g_star = best
        self.wasserstein_random_ = w_random
        self.distances_ = {
            "prediction": g_ij,
            "leave_one_out": g_j,
            "test_to_train": g_star,
            "random": g_random,
        }
        return labels[inverse]
