"""Tests for downscale.validation.aoa: DI against brute force, weights, threshold, and an unseen elevation band."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.spatial.distance import cdist, pdist

import downscale as ds
from downscale.validation.aoa import area_of_applicability, dissimilarity_index, upper_whisker


def _brute_force_di(train, new, weights=None):
    weights = np.ones(train.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    mean, sd = train.mean(axis=0), train.std(axis=0, ddof=1)
    t = (train - mean) / sd * weights
    n = (new - mean) / sd * weights
    return cdist(n, t).min(axis=1) / pdist(t).mean()


def test_di_matches_brute_force():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 4)) * [1.0, 10.0, 0.1, 5.0]
    new = rng.normal(size=(500, 4)) * [2.0, 10.0, 0.1, 5.0]
    assert dissimilarity_index(train, new) == pytest.approx(_brute_force_di(train, new), rel=1e-10)
    weights = [0.5, 2.0, 1.0, 0.0]
    expected = _brute_force_di(train, new, weights)
    assert dissimilarity_index(train, new, weights=weights) == pytest.approx(expected, rel=1e-10)


def test_named_weights_and_feature_order():
    rng = np.random.default_rng(1)
    train = pd.DataFrame(rng.normal(size=(50, 3)), columns=["dem", "ndvi", "slope"])
    new = pd.DataFrame(rng.normal(size=(20, 3)), columns=["slope", "dem", "ndvi"], index=np.arange(100, 120))
    di = dissimilarity_index(train, new, weights={"dem": 3.0, "ndvi": 1.0, "slope": 0.5})
    assert isinstance(di, pd.Series) and di.index.tolist() == list(range(100, 120))
    expected = _brute_force_di(train.to_numpy(), new[["dem", "ndvi", "slope"]].to_numpy(), [3.0, 1.0, 0.5])
    assert di.to_numpy() == pytest.approx(expected, rel=1e-10)
    # a feature with zero importance does not count: moving along it changes nothing
    shifted = new.assign(slope=new["slope"] + 100.0)
    weights = {"dem": 1.0, "ndvi": 1.0, "slope": 0.0}
    assert dissimilarity_index(train, shifted, weights).to_numpy() == pytest.approx(
        dissimilarity_index(train, new, weights).to_numpy()
    )
    with pytest.raises(ValueError, match="lacks the feature\\(s\\) \\['slope'\\]"):
        dissimilarity_index(train, new.drop(columns="slope"))
    with pytest.raises(ValueError, match="weights name feature\\(s\\) \\['elev'\\]"):
        dissimilarity_index(train, new, weights={"elev": 1.0})


def test_upper_whisker_matches_r_boxplot_stats():
    # R: boxplot.stats(c(1, 2, 3, 4, 5, 6, 7, 8, 9, 30))$stats[5] -> 9 (hinges 3 and 8, limit 15.5)
    assert upper_whisker([1, 2, 3, 4, 5, 6, 7, 8, 9, 30]) == 9.0
    # R: boxplot.stats(c(1, 2, 3, 4, 5, 6, 7, 8, 9, 15))$stats[5] -> 15
    assert upper_whisker([1, 2, 3, 4, 5, 6, 7, 8, 9, 15]) == 15.0
    # odd n: hinges are medians of the halves including the median: 2.5 and 6.5 for 1..9 with 20 -> limit 12.5
    assert upper_whisker([1, 2, 3, 4, 5, 6, 7, 8, 20]) == 8.0


def test_training_di_with_folds_is_at_least_leave_one_out():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(200, 3))
    folds = rng.integers(0, 5, size=200)
    loo = dissimilarity_index(train)
    cv = dissimilarity_index(train, cv_folds=folds)
    assert (cv >= loo - 1e-12).all() and (cv > loo).any()
    # fold labels and (train, test) index pairs are the same thing
    pairs = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(5)]
    assert dissimilarity_index(train, cv_folds=pairs) == pytest.approx(cv)
    # brute force for one point of fold 0
    i = np.flatnonzero(folds == 0)[0]
    scaled = (train - train.mean(0)) / train.std(0, ddof=1)
    expected = cdist(scaled[[i]], scaled[folds != 0]).min() / pdist(scaled).mean()
    assert cv[i] == pytest.approx(expected)
    with pytest.raises(ValueError, match="cv_folds has 10 fold labels but the training data have 200 rows"):
        dissimilarity_index(train, cv_folds=np.zeros(10))


def _scene_with_unseen_band():
    """Fine covariates on a 1 km grid; elevation ramps 0-3000 m west to east, training only sees < 1800 m."""
    rng = np.random.default_rng(3)
    grid = ds.grid.make_grid((80, 120), 1000.0, origin=(300_000.0, 5_000_000.0), crs="EPSG:32632")
    xx = np.broadcast_to(np.linspace(0, 3000, 120), (80, 120))
    elevation = xx + rng.normal(0, 30, size=(80, 120))
    ndvi = 0.6 - elevation / 6000 + rng.normal(0, 0.05, size=(80, 120))
    covariates = xr.Dataset(
        {"elevation": (("y", "x"), elevation), "ndvi": (("y", "x"), ndvi)}, coords=grid.coords
    )
    covariates["ndvi"][5, 5] = np.nan  # a cloud
    table = covariates.to_dataframe()[["elevation", "ndvi"]].dropna()
    trained = table[table["elevation"] < 1800].sample(400, random_state=0).reset_index(drop=True)
    return ds.grid.set_crs(covariates, "EPSG:32632"), trained


def test_aoa_flags_an_unseen_elevation_band():
    covariates, train = _scene_with_unseen_band()
    folds = np.random.default_rng(0).integers(0, 5, size=len(train))
    di, inside, threshold = area_of_applicability(
        train, covariates, weights={"elevation": 2.0, "ndvi": 1.0}, cv_folds=folds
    )
    assert isinstance(di, xr.DataArray) and di.dims == ("y", "x")
    assert ds.grid.get_crs(inside).to_epsg() == 32632
    assert inside.dtype == bool and di.attrs["aoa_threshold"] == threshold
    elevation = covariates["elevation"]
    seen = elevation < 1700
    unseen = elevation > 2100
    assert float(inside.where(seen).mean()) > 0.9  # the rest are tails of the NDVI noise
    assert not bool(inside.where(unseen, False).any())
    # the missing pixel: DI is NaN and it is not inside
    assert np.isnan(di[5, 5]) and not bool(inside[5, 5])
    # DI grows with the distance into the unseen band
    east = di.isel(y=slice(20, 30)).mean("y")
    assert (np.diff(east.values[-20:]) > -0.05).all()


def test_aoa_dataframe_and_array_inputs_agree_with_dataset():
    covariates, train = _scene_with_unseen_band()
    di_grid, mask_grid, threshold = area_of_applicability(train, covariates)
    table = covariates.to_dataframe()[["elevation", "ndvi"]]
    di_table, mask_table, threshold_table = area_of_applicability(train, table)
    assert threshold_table == threshold
    assert np.allclose(di_table.to_numpy(), di_grid.values.ravel(), equal_nan=True)
    di_array, mask_array, _ = area_of_applicability(train.to_numpy(), table.to_numpy())
    assert np.array_equal(mask_array, mask_grid.values.ravel())


def test_aoa_bad_input():
    with pytest.raises(ValueError, match="at least 2 complete training rows"):
        area_of_applicability(np.array([[1.0, 2.0]]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="new_X has 3 features but the training data have 2"):
        area_of_applicability(np.zeros((5, 2)) + np.arange(5)[:, None], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="All feature weights are zero"):
        dissimilarity_index(np.arange(10.0).reshape(5, 2), np.zeros((3, 2)), weights=[0.0, -1.0])
    with pytest.warns(UserWarning, match="1 training row\\(s\\) with missing values are left out"):
        dissimilarity_index(np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 0.0], [3.0, 3.0]]), np.zeros((1, 2)))
