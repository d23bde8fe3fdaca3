"""The study's statistics against reference formulas: the t interval by hand, the bootstrap against
the normal approximation, paired tests, hypervolume intervals, ray angle and non-uniformity in
closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from prefkit.moo import non_uniformity
from prefkit.moo.stats import (
    bootstrap_ci,
    gain_non_uniformity,
    hypervolume_ci,
    mean_ci,
    normalised_gain,
    paired_bootstrap,
    ray_angle,
    weighted_accuracy,
)


def test_mean_ci_is_the_t_interval():
    values = [0.61, 0.64, 0.58, 0.66]
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = sps.t.ppf(0.975, 3) * sd / 2  # t_{0.975, 3} = 3.182...
    assert sps.t.ppf(0.975, 3) == pytest.approx(3.1824463, abs=1e-6)
    assert mean_ci(values) == pytest.approx((0.6225, 0.6225 - half, 0.6225 + half))
    low90 = mean_ci(values, level=0.90)[1]
    assert low90 == pytest.approx(mean - sps.t.ppf(0.95, 3) * sd / 2) and low90 > mean - half
    one = mean_ci([0.7])
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])


def test_bootstrap_ci_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    correct = rng.random(4000) < 0.7
    acc = correct.mean()
    est, low, high = bootstrap_ci(lambda s: float(np.mean(s["t"])), {"t": correct}, resamples=2000)
    se = math.sqrt(acc * (1 - acc) / correct.size)
    assert est == pytest.approx(acc)
    assert low == pytest.approx(acc - 1.959964 * se, abs=0.15 * 1.96 * se)
    assert high == pytest.approx(acc + 1.959964 * se, abs=0.15 * 1.96 * se)
    again = bootstrap_ci(lambda s: float(np.mean(s["t"])), {"t": correct}, resamples=2000)
    assert again == (est, low, high)  # the same seed draws the same replicates
    other = bootstrap_ci(lambda s: float(np.mean(s["t"])), {"t": correct}, resamples=2000, seed=5)
    assert other[1] != low


def test_bootstrap_ci_is_stratified_and_element_wise():
    # task a always right, task b always wrong: every replicate keeps both rates exactly
    samples = {"a": np.ones(50, bool), "b": np.zeros(30, bool)}
    est, low, high = bootstrap_ci(lambda s: np.array([np.mean(s["a"]), np.mean(s["b"])]), samples,
                                  resamples=200)
    assert est.tolist() == [1.0, 0.0] and low.tolist() == [1.0, 0.0] and high.tolist() == [1.0, 0.0]


def test_paired_bootstrap_on_identical_arrays():
    rng = np.random.default_rng(2)
    a = {"x": rng.random(300) < 0.6, "y": rng.random(200) < 0.4}
    result = paired_bootstrap(a, {k: v.copy() for k, v in a.items()}, {"x": 0.5, "y": 0.5})
    assert result.difference == 0 and result.low == 0 and result.high == 0
    assert result.p_value == 1.0 and result.test == "paired bootstrap" and result.n == 500


def test_paired_bootstrap_finds_a_clear_difference():
    rng = np.random.default_rng(3)
    truth = rng.random(400)
    a = {"x": truth < 0.8, "y": rng.random(400) < 0.5}
    b = {"x": truth < 0.6, "y": a["y"].copy()}  # B is wrong on every example A is, and more
    result = paired_bootstrap(a, b, {"x": 0.75, "y": 0.25})
    expected = 0.75 * (a["x"].mean() - b["x"].mean())
    assert result.difference == pytest.approx(expected)
    assert result.low > 0 and result.high > result.low
    assert result.p_value == pytest.approx(2 / 2001)  # no replicate at or below 0: the +1 floor
    weight_zero = paired_bootstrap(a, b, {"x": 0.0, "y": 1.0})  # x does not count
    assert weight_zero.difference == 0 and weight_zero.p_value == 1.0


def test_paired_t_test_over_seeds():
    seeds_a = [{"x": 0.80, "y": 0.50}, {"x": 0.78, "y": 0.52}, {"x": 0.83, "y": 0.49}]
    seeds_b = [{"x": 0.70, "y": 0.50}, {"x": 0.71, "y": 0.50}, {"x": 0.72, "y": 0.47}]
    pref = {"x": 0.5, "y": 0.5}
    result = paired_bootstrap(seeds_a, seeds_b, pref)
    wa = [weighted_accuracy(s, pref) for s in seeds_a]
    wb = [weighted_accuracy(s, pref) for s in seeds_b]
    assert result.test == "paired t-test" and result.n == 3
    assert result.p_value == pytest.approx(sps.ttest_rel(wa, wb).pvalue)
    assert (result.difference, result.low, result.high) == pytest.approx(
        mean_ci(np.subtract(wa, wb)))
    assert result.p_value < 0.05


def test_hypervolume_ci_per_seed_and_by_bootstrap():
    seed0 = np.array([[0.8, 0.2], [0.6, 0.6], [0.2, 0.8]])  # staircase: .16 + .24 + .04 = .44
    seed1 = np.array([[0.7, 0.2], [0.5, 0.5], [0.2, 0.7]])  # .14 + .15 + .04 = .33
    mean, low, high = hypervolume_ci([seed0, seed1])
    assert (mean, low, high) == pytest.approx(mean_ci([0.44, 0.33]))
    assert hypervolume_ci([seed0], reference=[0.1, 0.1])[0] == pytest.approx(
        0.1 * 0.7 + 0.4 * 0.5 + 0.2 * 0.1)
    rng = np.random.default_rng(4)
    n = 500
    examples = {t: np.stack([rng.random(n) < s for s in seed0[:, j]]) for j, t in enumerate("xy")}
    observed = np.stack([examples[t].mean(axis=1) for t in "xy"], axis=1)
    est, low, high = hypervolume_ci([observed], examples=examples, resamples=500)
    assert low < est < high and high - low < 0.15
    assert hypervolume_ci([observed], examples=examples, resamples=500) == (est, low, high)
    alone = hypervolume_ci([observed])
    assert alone[0] == est and math.isnan(alone[1])


def test_normalised_gain_over_chance():
    gain = normalised_gain([0.75, 0.40, 1.0, 0.5], [0.5, 0.5, 1.0, 0.0])
    assert gain.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5])  # below chance clips to 0


def test_ray_angle_tells_vertex_points_apart():
    # both at preference [1, 0, 0]: the second gained more off the preferred task
    first, second = [0.6, 0.1, 0.1], [0.6, 0.4, 0.4]
    assert ray_angle(first, [1, 0, 0]) == pytest.approx(
        math.degrees(math.acos(0.6 / math.sqrt(0.36 + 0.02))))  # 13.26°
    assert ray_angle(second, [1, 0, 0]) == pytest.approx(
        math.degrees(math.acos(0.6 / math.sqrt(0.36 + 0.32))))  # 43.31°
    assert ray_angle(first, [1, 0, 0]) < ray_angle(second, [1, 0, 0]) - 25
    # ... where the KL measure reads 0 on both (support of one task)
    assert gain_non_uniformity(first, [1, 0, 0]) == gain_non_uniformity(second, [1, 0, 0]) == 0.0
    assert ray_angle([0.2, 0.1, 0.3], [2, 1, 3]) == pytest.approx(0.0, abs=1e-6)  # on the ray
    assert ray_angle([0.0, 0.5, 0.0], [1, 0, 1]) == pytest.approx(90.0)
    assert math.isnan(ray_angle([0, 0, 0], [1, 1, 1]))


def test_non_uniformity_closed_form():
    # p = [.5, .5, 0], errors e = 1 - g = (.2, .6): shares (.25, .75) over the support of 2 tasks
    value = gain_non_uniformity([0.8, 0.4, 0.9], [0.5, 0.5, 0.0])
    assert value == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    # full support: the same as EPO's measure on the errors (prefkit.moo.non_uniformity)
    g, p = np.array([0.7, 0.2, 0.5]), np.array([0.2, 0.3, 0.5])
    expected = float(non_uniformity(torch.as_tensor(1 - g), torch.as_tensor(p)))
    assert gain_non_uniformity(g, p) == pytest.approx(expected)
    shares = p * (1 - g) / (p * (1 - g)).sum()
    assert expected == pytest.approx(float((shares * np.log(3 * shares)).sum()))
    # on the ray (p_i e_i equal) and at perfection: 0
    assert gain_non_uniformity([0.5, 0.75, 0.0], [1, 2, 0]) == pytest.approx(0.0, abs=1e-12)
    assert gain_non_uniformity([1, 1, 0.3], [1, 1, 0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        ray_angle([0.1, 0.2], [1, -1])
