"""Tests for downscale.validation.metrics: hand-computed values, hydroeval-style reference formulas, bootstrap coverage."""

import numpy as np
import pytest

from downscale.validation import metrics

OBS = np.array([2.0, 4.0, 6.0, 8.0])
SIM = np.array([3.0, 3.0, 7.0, 11.0])
# errors: 1, -1, 1, 3


def _hydroeval_kgeprime(sim, obs):
    """KGE' as hydroeval writes it (Kling et al. 2012): numpy std with ddof=0."""
    r = np.corrcoef(sim, obs)[0, 1]
    beta = np.mean(sim) / np.mean(obs)
    gamma = (np.std(sim) / np.mean(sim)) / (np.std(obs) / np.mean(obs))
    return 1 - np.sqrt((r - 1) ** 2 + (beta - 1) ** 2 + (gamma - 1) ** 2)


def _hydroeval_nse(sim, obs):
    return 1 - np.sum((obs - sim) ** 2, axis=0) / np.sum((obs - np.mean(obs)) ** 2)


def test_hand_computed_values():
    assert metrics.bias(OBS, SIM) == pytest.approx(1.0)  # mean(1, -1, 1, 3)
    assert metrics.mae(OBS, SIM) == pytest.approx(1.5)
    assert metrics.rmse(OBS, SIM) == pytest.approx(np.sqrt(12 / 4))
    # errors minus their mean: 0, -2, 0, 2 -> sqrt(8 / 4)
    assert metrics.ubrmse(OBS, SIM) == pytest.approx(np.sqrt(2.0))
    # sum of squared errors 12, sum of squared anomalies of OBS 20
    assert metrics.nse(OBS, SIM) == pytest.approx(1 - 12 / 20)
    # anomalies obs (-3, -1, 1, 3), sim (-3, -3, 1, 5): cov 28, |obs| sqrt(20), |sim| sqrt(44)
    assert metrics.pearson_r(OBS, SIM) == pytest.approx(28 / np.sqrt(20 * 44))


def test_kge_hand_computed():
    r = 28 / np.sqrt(20 * 44)
    beta = 6.0 / 5.0
    gamma = (np.sqrt(44 / 4) / 6.0) / (np.sqrt(20 / 4) / 5.0)
    expected = 1 - np.sqrt((r - 1) ** 2 + (beta - 1) ** 2 + (gamma - 1) ** 2)
    assert metrics.kge(OBS, SIM) == pytest.approx(expected, rel=1e-12)


def test_ubrmse_identity():
    rng = np.random.default_rng(3)
    obs, sim = rng.normal(size=50), rng.normal(size=50) + 0.7
    assert metrics.ubrmse(obs, sim) ** 2 == pytest.approx(
        metrics.rmse(obs, sim) ** 2 - metrics.bias(obs, sim) ** 2
    )


@pytest.mark.parametrize("seed", range(5))
def test_kge_nse_match_hydroeval_formulas(seed):
    rng = np.random.default_rng(seed)
    obs = rng.gamma(2.0, 3.0, size=30)
    sim = 0.8 * obs + rng.normal(0, 1.5, size=30) + 1.0
    assert metrics.kge(obs, sim) == pytest.approx(_hydroeval_kgeprime(sim, obs), rel=1e-12)
    assert metrics.nse(obs, sim) == pytest.approx(_hydroeval_nse(sim, obs), rel=1e-12)
    from scipy.stats import pearsonr

    assert metrics.pearson_r(obs, sim) == pytest.approx(pearsonr(obs, sim)[0], rel=1e-12)


def test_sklearn_agreement():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    obs, sim = rng.normal(size=40), rng.normal(size=40)
    assert metrics.rmse(obs, sim) == pytest.approx(np.sqrt(mean_squared_error(obs, sim)))
    assert metrics.mae(obs, sim) == pytest.approx(mean_absolute_error(obs, sim))
    assert metrics.nse(obs, sim) == pytest.approx(r2_score(obs, sim))  # NSE is R^2 about the 1:1 line


def test_perfect_prediction():
    assert metrics.kge(OBS, OBS) == pytest.approx(1.0)
    assert metrics.nse(OBS, OBS) == pytest.approx(1.0)
    assert metrics.rmse(OBS, OBS) == 0.0


def test_nan_pairs_dropped():
    obs = np.array([2.0, np.nan, 4.0, 6.0, 8.0, 1.0])
    sim = np.array([3.0, 5.0, 3.0, 7.0, 11.0, np.nan])
    assert metrics.rmse(obs, sim) == pytest.approx(metrics.rmse(OBS, SIM))
    assert metrics.kge(obs, sim) == pytest.approx(metrics.kge(OBS, SIM))
    # 2-D inputs are flattened
    assert metrics.bias(OBS.reshape(2, 2), SIM.reshape(2, 2)) == pytest.approx(1.0)


def test_too_few_pairs_give_nan():
    assert np.isnan(metrics.rmse([np.nan], [1.0]))
    assert np.isnan(metrics.pearson_r([1.0], [2.0]))
    assert np.isnan(metrics.kge([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant observations: r undefined


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="same number of values; y_true has 3, y_pred has 2"):
        metrics.rmse([1.0, 2.0, 3.0], [1.0, 2.0])


def test_gdown_components_hand_computed():
    obs = np.array([1.0, 2.0, 3.0, 4.0])
    coarse = np.array([2.0, 3.0, 3.0, 4.0])  # bias 0.5, slope 0.6, r = 3 / sqrt(5 * 2)
    fine = np.array([1.5, 2.0, 3.5, 4.0])  # bias 0.25, slope 0.9, r = 4.5 / sqrt(5 * 4.25)
    r_no, r_down = 3 / np.sqrt(10), 4.5 / np.sqrt(5 * 4.25)
    g_r = ((1 - r_no) - (1 - r_down)) / ((1 - r_no) + (1 - r_down))
    g_b = (0.5 - 0.25) / (0.5 + 0.25)
    g_s = (0.4 - 0.1) / (0.4 + 0.1)
    assert metrics.gdown(obs, fine, coarse) == pytest.approx((g_r + g_b + g_s) / 3)
    # antisymmetric: swapping the fine and coarse fields flips the sign
    assert metrics.gdown(obs, coarse, fine) == pytest.approx(-(g_r + g_b + g_s) / 3)
    # no change, no gain
    assert metrics.gdown(obs, coarse, coarse) == pytest.approx(0.0)


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=60)
    sim = obs + rng.normal(0.3, 0.5, size=60)
    low, high = metrics.bootstrap_ci(metrics.rmse, obs, sim)
    assert low < metrics.rmse(obs, sim) < high
    assert metrics.bootstrap_ci(metrics.rmse, obs, sim) == (low, high)
    # the fast vectorised path and a plain callable give the same interval
    slow = metrics.bootstrap_ci(lambda t, p: metrics.rmse(t, p), obs, sim)
    assert slow == pytest.approx((low, high))


def test_bootstrap_ci_gdown_and_groups():
    rng = np.random.default_rng(2)
    obs = rng.normal(size=80)
    coarse = 0.5 * obs + rng.normal(0, 0.5, size=80) + 0.4
    fine = obs + rng.normal(0, 0.3, size=80)
    low, high = metrics.bootstrap_ci(metrics.gdown, obs, fine, y_coarse=coarse, n_boot=300)
    assert 0 < low < metrics.gdown(obs, fine, coarse) < high <= 1
    with pytest.raises(ValueError, match="gdown needs the coarse values"):
        metrics.bootstrap_ci(metrics.gdown, obs, fine)
    # grouped (cluster) bootstrap: 8 stations x 10 times with a station effect -> wider than iid
    station = np.repeat(np.arange(8), 10)
    offsets = rng.normal(0, 1.0, size=8)[station]
    sim = obs + offsets
    iid = metrics.bootstrap_ci(metrics.bias, obs, sim, n_boot=500)
    grouped = metrics.bootstrap_ci(metrics.bias, obs, sim, n_boot=500, groups=station)
    assert grouped[1] - grouped[0] > 2 * (iid[1] - iid[0])


def test_bootstrap_bad_arguments():
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        metrics.bootstrap_ci(metrics.rmse, OBS, SIM, level=90)
    assert all(np.isnan(metrics.bootstrap_ci(metrics.rmse, [1.0], [2.0])))


@pytest.mark.parametrize(
    ("metric", "truth"),
    [
        (metrics.bias, lambda mu, sd: mu),
        (metrics.rmse, lambda mu, sd: np.sqrt(mu**2 + sd**2)),
        (metrics.ubrmse, lambda mu, sd: sd),
    ],
)
def test_bootstrap_coverage_is_near_nominal(metric, truth):
    """Simulate many small station samples with a known population value; a 90 % interval covers it ~90 %."""
    rng = np.random.default_rng(42)
    mu, sd, n, n_sim = 0.5, 1.0, 40, 300
    true_value = truth(mu, sd)
    covered = 0
    for i in range(n_sim):
        obs = rng.normal(10.0, 2.0, size=n)
        sim = obs + rng.normal(mu, sd, size=n)
        low, high = metrics.bootstrap_ci(metric, obs, sim, n_boot=400, level=0.9, seed=i)
        covered += low <= true_value <= high
    coverage = covered / n_sim
    # binomial sd at p = 0.9, 300 draws is 0.017; percentile intervals run a little narrow at n = 40
    assert 0.82 <= coverage <= 0.96, coverage
