"""prefkit.moo scalarizations on hand values and on an analytic two-quadratic problem."""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.moo import (
    chebyshev_scalarization,
    linear_scalarization,
    non_uniformity,
    normalize_preference,
)

C1 = torch.tensor([0.0, 0.0], dtype=torch.float64)
C2 = torch.tensor([2.0, 1.0], dtype=torch.float64)


def quad_losses(theta: torch.Tensor) -> torch.Tensor:
    return torch.stack([((theta - C1) ** 2).sum(), ((theta - C2) ** 2).sum()])


def chebyshev_point(p) -> torch.Tensor:
    """Closed form: on the segment theta = c1 + t (c2 - c1), L1 = t^2 D^2 and L2 = (1-t)^2 D^2;
    p1 L1 = p2 L2 gives t = sqrt(p2) / (sqrt(p1) + sqrt(p2)). That point minimises max_i p_i L_i:
    any move either increases one of the (equal) weighted losses or leaves the segment."""
    t = math.sqrt(p[1]) / (math.sqrt(p[0]) + math.sqrt(p[1]))
    return C1 + t * (C2 - C1)


def test_normalize_preference():
    assert torch.allclose(normalize_preference([1, 3]), torch.tensor([0.25, 0.75], dtype=torch.float64))
    like = torch.zeros(3, dtype=torch.float32)
    out = normalize_preference(torch.tensor([2.0, 2.0, 4.0]), 3, like=like)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([0.25, 0.25, 0.5]))


@pytest.mark.parametrize(
    "fn",
    [
        linear_scalarization,
        chebyshev_scalarization,
        non_uniformity,
        lambda L, p: chebyshev_scalarization(L, p, mu=0.1),
    ],
)
@pytest.mark.parametrize(
    ("pref", "match"),
    [
        ([0.5, 0.5, 0.0], "2 tasks"),
        ([1.0], "2 tasks"),
        ([-0.1, 1.1], "non-negative"),
        ([0.0, 0.0], "all zero"),
        ([float("nan"), 1.0], "finite"),
        ([[0.5, 0.5]], "1-D"),
    ],
)
def test_invalid_preference_raises(fn, pref, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.tensor([1.0, 2.0]), pref)


def test_other_input_errors():
    with pytest.raises(ValueError, match="1-D"):
        linear_scalarization(torch.ones(2, 2), [0.5, 0.5])
    with pytest.raises(ValueError, match="mu must be > 0"):
        chebyshev_scalarization(torch.ones(2), [0.5, 0.5], mu=0.0)
    with pytest.raises(ValueError, match="ideal"):
        chebyshev_scalarization(torch.ones(2), [0.5, 0.5], ideal=[0.0])
    with pytest.raises(ValueError, match="non-negative losses"):
        non_uniformity(torch.tensor([-1.0, 2.0]), [0.5, 0.5])


def test_linear_scalarization_hand_values():
    L = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # p = (1, 1, 2) / 4 -> 0.25 + 0.5 + 2 = 2.75
    assert linear_scalarization(L, [1, 1, 2]).item() == pytest.approx(2.75)
    assert linear_scalarization(L, [0, 0, 5]).item() == pytest.approx(4.0)
    L.requires_grad_(True)
    linear_scalarization(L, [1, 1, 2]).backward()
    assert torch.allclose(L.grad, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))


def test_chebyshev_hand_values_and_gradient():
    L = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    # p = (0.75, 0.25): weighted = (0.75, 0.75) with ideal 0; with ideal (0, 1): (0.75, 0.5)
    assert chebyshev_scalarization(L, [3, 1]).item() == pytest.approx(0.75)
    v = chebyshev_scalarization(L, [3, 1], ideal=[0.0, 1.0])
    assert v.item() == pytest.approx(0.75)
    v.backward()
    assert torch.allclose(L.grad, torch.tensor([0.75, 0.0], dtype=torch.float64))


def test_smooth_chebyshev_bounds_limit_and_gradient():
    L = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    p, z = [0.2, 0.5, 0.3], [0.1, 0.0, 0.2]
    hard = chebyshev_scalarization(L, p, ideal=z).item()
    assert hard == pytest.approx(1.0)
    prev = math.inf
    for mu in (1.0, 0.1, 0.01, 1e-4):
        soft = chebyshev_scalarization(L, p, ideal=z, mu=mu).item()
        assert hard <= soft <= hard + mu * math.log(3) + 1e-12
        assert soft <= prev
        prev = soft
    assert prev == pytest.approx(hard, abs=1e-3)

    # autograd against the analytic gradient: d/dL_i = p_i * softmax(p * (L - z) / mu)_i
    mu = 0.3
    pt = torch.tensor(p, dtype=torch.float64)
    w = pt * (L.detach() - torch.tensor(z, dtype=torch.float64)) / mu
    expected = pt * torch.softmax(w, dim=0)
    chebyshev_scalarization(L, p, ideal=z, mu=mu).backward()
    assert torch.allclose(L.grad, expected, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: chebyshev_scalarization(x, p, ideal=z, mu=mu), (L.detach().clone().requires_grad_(True),)
    )


@pytest.mark.parametrize("p", [(0.5, 0.5), (0.2, 0.8), (0.9, 0.1), (0.35, 0.65)])
def test_chebyshev_minimiser_two_quadratics(p):
    star = chebyshev_point(p)
    L_star = quad_losses(star)
    assert p[0] * L_star[0].item() == pytest.approx(p[1] * L_star[1].item())
    # the closed form is the minimiser of the hard form: no random nearby point does better
    gen = torch.Generator().manual_seed(0)
    best = chebyshev_scalarization(L_star, p).item()
    for _ in range(200):
        other = star + 0.05 * torch.randn(2, generator=gen, dtype=torch.float64)
        assert chebyshev_scalarization(quad_losses(other), p).item() >= best - 1e-12
    # minimising the smooth form by gradient-based optimisation reaches it within 1e-3
    theta = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        v = chebyshev_scalarization(quad_losses(theta), p, mu=1e-4)
        v.backward()
        return v

    opt.step(closure)
    assert (theta.detach() - star).norm().item() < 1e-3


def test_non_uniformity_hand_values():
    # on the ray p_i L_i equal -> 0
    assert non_uniformity(torch.tensor([4.0, 1.0]), [1, 4]).item() == pytest.approx(0.0, abs=1e-15)
    assert non_uniformity(torch.tensor([2.0, 2.0, 2.0]), [1, 1, 1]).item() == pytest.approx(0.0, abs=1e-15)
    # p = (0.5, 0.5), L = (3, 1): l_hat = (0.75, 0.25); mu = 0.75 log 1.5 + 0.25 log 0.5
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert non_uniformity(torch.tensor([3.0, 1.0]), [1, 1]).item() == pytest.approx(expected)
    # a zero weighted loss contributes 0: l_hat = (1, 0) -> log 2
    assert non_uniformity(torch.tensor([3.0, 0.0]), [1, 1]).item() == pytest.approx(math.log(2))
    assert non_uniformity(torch.tensor([3.0, 5.0]), [1, 0]).item() == pytest.approx(math.log(2))
    # scale invariant in L and p
    a = non_uniformity(torch.tensor([1.0, 2.0, 5.0]), [0.2, 0.3, 0.5]).item()
    b = non_uniformity(torch.tensor([10.0, 20.0, 50.0]), [2, 3, 5]).item()
    assert a == pytest.approx(b) and a > 0
    assert non_uniformity(torch.zeros(2), [1, 1]).item() == 0.0
