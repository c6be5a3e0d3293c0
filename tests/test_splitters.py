"""Tests for downscale.validation.splitters: spatial blocks, buffered leave-one-out, kNNDM."""

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

import downscale as ds
from downscale.validation.splitters import (
    BufferedLeaveOneOut,
    KNNDMKFold,
    SpatialBlockKFold,
    coordinates_of,
)


def _grid_coords(n=20, step=1000.0):
    xx, yy = np.meshgrid(np.arange(n) * step + step / 2, np.arange(n) * step + step / 2)
    return np.column_stack([xx.ravel(), yy.ravel()])


def _check_partition(splits, n):
    tests = np.concatenate([test for _, test in splits])
    assert np.array_equal(np.sort(tests), np.arange(n))
    for train, test in splits:
        assert not set(train) & set(test)


def test_blocks_partition_and_never_split_a_block():
    coords = _grid_coords()
    cv = SpatialBlockKFold(n_splits=4, block_size=5000.0)
    splits = list(cv.split(coords))
    assert len(splits) == cv.get_n_splits() == 4
    _check_partition(splits, len(coords))
    block = np.floor(coords / 5000.0).astype(int)
    block_id = block[:, 0] * 100 + block[:, 1]
    for _, test in splits:
        # every block that appears in a test set appears there whole (25 cells)
        ids, counts = np.unique(block_id[test], return_counts=True)
        assert (counts == 25).all()
    # 16 equal blocks over 4 folds: perfectly balanced
    assert [len(test) for _, test in splits] == [100] * 4


def test_blocks_balanced_by_count_with_unequal_blocks():
    rng = np.random.default_rng(0)
    coords = np.concatenate([rng.uniform(0, 10_000, size=(300, 2)), rng.uniform(0, 2_000, size=(200, 2))])
    labels = SpatialBlockKFold(n_splits=5, block_size=2000.0).fold_labels(coords)
    sizes = np.bincount(labels)
    block_sizes = np.unique(np.floor(coords / 2000.0), axis=0, return_counts=True)[1]
    # greedy largest-first assignment: folds differ by at most the largest block
    assert sizes.max() - sizes.min() <= block_sizes.max()


def test_default_block_size_is_extent_over_n_splits():
    coords = _grid_coords(n=10)  # extent 9000 m
    cv = SpatialBlockKFold(n_splits=3)
    assert cv.block_size_for(coords) == pytest.approx(3000.0)
    _check_partition(list(cv.split(coords)), len(coords))


def test_buffer_removes_exactly_the_close_training_points():
    coords = _grid_coords(n=12)
    plain = list(SpatialBlockKFold(n_splits=3, block_size=4000.0).split(coords))
    buffered = list(SpatialBlockKFold(n_splits=3, block_size=4000.0, buffer=1500.0).split(coords))
    for (train0, test0), (train1, test1) in zip(plain, buffered, strict=True):
        assert np.array_equal(test0, test1)
        distance = cdist(coords[train0], coords[test0]).min(axis=1)
        assert np.array_equal(train1, train0[distance > 1500.0])
        assert cdist(coords[train1], coords[test1]).min() > 1500.0


def test_inputs_table_geodataframe_pixeltable_array_agree():
    import geopandas as gpd

    coords = _grid_coords(n=6)
    table = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "feature": np.arange(len(coords))})
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(coords[:, 0], coords[:, 1]), crs="EPSG:32632")
    indexed = table.set_index(["y", "x"])
    cv = SpatialBlockKFold(n_splits=3, block_size=2000.0)
    expected = cv.fold_labels(coords)
    for X in (table, points, indexed):
        assert np.array_equal(coordinates_of(X), coords)
        assert np.array_equal(cv.fold_labels(X), expected)
    # a pixel table from the grid module: coordinates of its valid pixels, row for row
    grid = ds.grid.make_grid((4, 5), 1000.0, crs="EPSG:32632")
    field = grid.assign(v=(("y", "x"), np.arange(20.0).reshape(4, 5)))
    field["v"][0, 0] = np.nan
    pixels = ds.grid.to_table(field)
    xy = coordinates_of(pixels)
    assert xy.shape == (19, 2)
    assert np.allclose(xy[0], [1500.0, 3500.0])  # first valid pixel: row 0, column 1


def test_sklearn_cross_val_score_accepts_the_splitter():
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import cross_val_score

    coords = _grid_coords(n=10)
    X = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1]})
    y = 0.001 * X["x"] + 0.002 * X["y"]
    scores = cross_val_score(LinearRegression(), X, y, cv=SpatialBlockKFold(n_splits=4), scoring="r2")
    assert scores.shape == (4,)
    assert np.allclose(scores, 1.0)
    assert "SpatialBlockKFold(block_size=None, buffer=0.0, n_splits=4" in repr(SpatialBlockKFold(n_splits=4))


def test_rows_at_one_location_share_a_fold():
    coords = np.repeat(_grid_coords(n=5), 3, axis=0)  # 25 stations x 3 times
    for cv in (
        SpatialBlockKFold(n_splits=5, block_size=1000.0),
        KNNDMKFold(n_splits=5, prediction_points=_grid_coords(n=10, step=500.0)),
    ):
        labels = cv.fold_labels(coords)
        assert (labels.reshape(25, 3) == labels.reshape(25, 3)[:, :1]).all()


def test_fewer_stations_than_folds():
    coords = np.array([[0.0, 0.0], [5000.0, 0.0], [0.0, 5000.0]])
    with pytest.raises(ValueError, match="Cannot make 5 folds from 3 distinct locations"):
        list(SpatialBlockKFold(n_splits=5).split(coords))
    with pytest.raises(ValueError, match="Cannot make 5 folds from 3 distinct locations"):
        list(KNNDMKFold(n_splits=5, prediction_points=coords).split(coords))
    # repeated times at the same 3 stations do not make more locations
    with pytest.raises(ValueError, match="from 3 distinct locations"):
        list(SpatialBlockKFold(n_splits=4).split(np.repeat(coords, 4, axis=0)))


def test_bad_inputs():
    import geopandas as gpd

    with pytest.raises(ValueError, match="Only 1 blocks of 1e\\+06 m contain samples"):
        list(SpatialBlockKFold(n_splits=3, block_size=1e6).split(_grid_coords(n=4)))
    with pytest.raises(ValueError, match="n_splits must be an integer of at least 2"):
        list(SpatialBlockKFold(n_splits=1).split(_grid_coords(n=4)))
    with pytest.raises(ValueError, match="without 'x' and 'y' columns"):
        list(SpatialBlockKFold().split(pd.DataFrame({"a": [1.0]})))
    with pytest.raises(ValueError, match="must be an \\(n, 2\\) array"):
        list(SpatialBlockKFold().split(np.zeros((4, 3))))
    lonlat = gpd.GeoDataFrame(geometry=gpd.points_from_xy([7.0, 8.0], [45.0, 46.0]), crs="EPSG:4326")
    with pytest.raises(ValueError, match="geographic coordinates .*estimate_utm_crs"):
        list(SpatialBlockKFold(n_splits=2).split(lonlat))


def test_buffered_leave_one_out_matches_brute_force():
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, 20_000, size=(30, 2))
    cv = BufferedLeaveOneOut(radius=4000.0)
    splits = list(cv.split(coords))
    assert len(splits) == cv.get_n_splits(coords) == 30
    _check_partition(splits, 30)
    distance = cdist(coords, coords)
    for train, test in splits:
        (i,) = test
        assert np.array_equal(train, np.flatnonzero(distance[i] > 4000.0))


def test_buffered_leave_one_out_radius_too_large():
    coords = _grid_coords(n=3)
    with pytest.raises(ValueError, match="no training location left .* Use a smaller radius"):
        list(BufferedLeaveOneOut(radius=1e6).split(coords))
    with pytest.raises(ValueError, match="needs X"):
        BufferedLeaveOneOut().get_n_splits()


def _clustered_training(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(10_000, 90_000, size=(8, 2))
    return np.concatenate([c + rng.normal(0, 1500, size=(25, 2)) for c in centres])


def test_knndm_matches_prediction_distances_better_than_random():
    """Clustered stations, prediction over the whole domain: kNNDM folds mimic the prediction distances."""
    train = _clustered_training()
    prediction = _grid_coords(n=50, step=2000.0)
    cv = KNNDMKFold(n_splits=5, prediction_points=prediction)
    splits = list(cv.split(train))
    _check_partition(splits, len(train))
    assert cv.n_clusters_ != "random"
    # the reported W is the Wasserstein distance of the reported distances
    d = cv.distances_
    assert cv.wasserstein_ == pytest.approx(wasserstein_distance(d["test_to_train"], d["prediction"]))
    assert cv.wasserstein_random_ == pytest.approx(wasserstein_distance(d["random"], d["prediction"]))
    # random folds: test points have a training neighbour a few hundred metres away; the map is predicted
    # kilometres away from the nearest station. kNNDM closes most of that gap.
    assert cv.wasserstein_ < 0.35 * cv.wasserstein_random_
    # independent check with a fresh random K-fold
    from sklearn.model_selection import KFold

    from downscale.validation.splitters import _cv_distances

    random_labels = np.zeros(len(train), dtype=int)
    for fold, (_, test) in enumerate(KFold(5, shuffle=True, random_state=1).split(train)):
        random_labels[test] = fold
    w_kfold = wasserstein_distance(_cv_distances(train, random_labels), d["prediction"])
    assert cv.wasserstein_ < 0.35 * w_kfold
    # no fold holds more than max_fraction of the stations
    assert np.bincount(cv.fold_labels(train)).max() <= 0.5 * len(train)


def test_knndm_hierarchical_and_grid_prediction_points():
    train = _clustered_training(seed=3)
    grid = ds.grid.make_grid((40, 40), 2500.0, crs="EPSG:32632")
    field = grid.assign(v=(("y", "x"), np.ones((40, 40))))
    cv = KNNDMKFold(n_splits=4, prediction_points=field, clustering="hierarchical")
    cv.fold_labels(train)
    assert cv.wasserstein_ < 0.5 * cv.wasserstein_random_


def test_knndm_falls_back_to_random_folds_for_interpolation():
    """Stations spread densely over the prediction area: random K-fold is already representative."""
    rng = np.random.default_rng(5)
    train = rng.uniform(0, 100_000, size=(300, 2))
    prediction = rng.uniform(0, 100_000, size=(1000, 2))
    cv = KNNDMKFold(n_splits=5, prediction_points=prediction)
    labels = cv.fold_labels(train)
    assert cv.n_clusters_ == "random"
    assert cv.wasserstein_ == cv.wasserstein_random_
    assert np.bincount(labels).tolist() == [60] * 5


def test_knndm_bad_arguments():
    train = _clustered_training()
    with pytest.raises(ValueError, match="needs the prediction locations"):
        KNNDMKFold().fold_labels(train)
    with pytest.raises(ValueError, match="max_fraction must be strictly between 1/n_splits = 0.2 and 1"):
        KNNDMKFold(max_fraction=0.1, prediction_points=train).fold_labels(train)
    with pytest.raises(ValueError, match="clustering must be 'kmeans' or 'hierarchical'"):
        KNNDMKFold(clustering="dbscan", prediction_points=train).fold_labels(train)


def test_geographic_grids_are_refused():
    grid = ds.grid.make_grid((4, 4), 0.1, origin=(7.0, 45.0), crs="EPSG:4326")
    field = grid.assign(v=(("y", "x"), np.ones((4, 4))))
    with pytest.raises(
        ValueError, match="geographic \\(lat/lon\\) grid; distances and block sizes are in metres"
    ):
        coordinates_of(ds.grid.to_table(field))
    with pytest.raises(ValueError, match="prediction_points is on a geographic"):
        KNNDMKFold(n_splits=3, prediction_points=field).fold_labels(_grid_coords(n=4))
