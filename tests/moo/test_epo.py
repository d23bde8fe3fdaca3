"""EPO search on analytic problems whose exact Pareto point on the preference ray is known."""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.moo import epo_search_direction, non_uniformity
from prefkit.moo.epo import EPODirection

C1 = torch.tensor([0.0, 0.0], dtype=torch.float64)
C2 = torch.tensor([2.0, 1.0], dtype=torch.float64)


def losses_and_jacobian(fn, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    theta = theta.detach().requires_grad_(True)
    L = fn(theta)
    J = torch.stack([torch.autograd.grad(L[i], theta, retain_graph=True)[0] for i in range(L.numel())])
    return L.detach(), J


def quadratics(theta):
    return torch.stack([((theta - C1) ** 2).sum(), ((theta - C2) ** 2).sum()])


def run_epo(fn, theta, p, *, lr, steps, eps=1e-8):
    modes = []
    for _ in range(steps):
        L, J = losses_and_jacobian(fn, theta)
        d = epo_search_direction(L, J, p, eps=eps)
        assert d.lp_success
        assert torch.all(d.alpha >= 0) and d.alpha.sum().item() == pytest.approx(1.0)
        modes.append(d.mode)
        theta = theta - lr * d.alpha @ J
    return theta, modes


@pytest.mark.parametrize("p", [(0.5, 0.5), (0.2, 0.8), (0.9, 0.1), (0.65, 0.35)])
def test_epo_two_quadratics_reaches_exact_pareto_point(p):
    # Pareto set: segment c1 + t (c2 - c1), where L1 = t^2 D^2, L2 = (1 - t)^2 D^2. On the ray
    # p1 L1 = p2 L2 -> t = sqrt(p2) / (sqrt(p1) + sqrt(p2)).
    t = math.sqrt(p[1]) / (math.sqrt(p[0]) + math.sqrt(p[1]))
    star = C1 + t * (C2 - C1)
    theta, modes = run_epo(quadratics, torch.tensor([3.0, -2.0], dtype=torch.float64), p, lr=0.1, steps=80)
    assert (theta - star).norm().item() < 1e-3
    L = quadratics(theta)
    assert p[0] * L[0].item() == pytest.approx(p[1] * L[1].item(), rel=1e-3)
    assert non_uniformity(L, p).item() < 1e-6
    # starting off the ray (unless p is uniform), EPO balances first and descends at the end
    if p[0] != p[1]:
        assert modes[0] == "balance"
    assert modes[-1] == "descent"


@pytest.mark.parametrize("p", [(0.5, 0.5), (0.2, 0.8), (0.7, 0.3)])
def test_epo_paper_toy_problem(p):
    # Mahapatra & Rajan's toy problem: L1 = 1 - exp(-|x - a|^2), L2 = 1 - exp(-|x + a|^2), a = 1/sqrt(n).
    # Pareto set: x = s a, s in [-1, 1]; the EPO point solves p1 L1(s) = p2 L2(s) (bisection).
    n = 10
    a = torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64)

    def fn(x):
        return torch.stack([1 - torch.exp(-((x - a) ** 2).sum()), 1 - torch.exp(-((x + a) ** 2).sum())])

    def gap(s):
        return p[0] * (1 - math.exp(-((1 - s) ** 2))) - p[1] * (1 - math.exp(-((1 + s) ** 2)))

    lo, hi = -1.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    star = lo * a
    x0 = 0.3 * torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = run_epo(fn, x0, p, lr=0.5, steps=100)
    assert (x - star).norm().item() < 1e-3
    L = fn(x)
    assert p[0] * L[0].item() == pytest.approx(p[1] * L[1].item(), rel=1e-3)
    assert non_uniformity(L, p).item() < 1e-6


def test_epo_three_quadratics():
    # Three quadratics with identity Hessians: the Pareto set is the triangle of the centres; EPO
    # reaches the point inside it where p_i |theta - c_i|^2 are all equal.
    centres = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, 1.5]], dtype=torch.float64)
    p = (0.5, 0.3, 0.2)

    def fn(theta):
        return ((theta - centres) ** 2).sum(dim=1)

    theta, _ = run_epo(fn, torch.tensor([3.0, 3.0], dtype=torch.float64), p, lr=0.1, steps=100)
    weighted = torch.tensor(p, dtype=torch.float64) * fn(theta)
    assert (weighted.max() - weighted.min()).item() < 1e-3 * weighted.mean().item()
    assert non_uniformity(fn(theta), p).item() < 1e-6
    # inside the triangle: barycentric coordinates are non-negative
    A = torch.stack([centres[1] - centres[0], centres[2] - centres[0]], dim=1)
    lam = torch.linalg.solve(A, theta - centres[0])
    assert lam.min().item() >= -1e-9 and lam.sum().item() <= 1 + 1e-9


def test_epo_balance_step_moves_towards_ray():
    L, J = losses_and_jacobian(quadratics, torch.tensor([0.2, 0.1], dtype=torch.float64))
    p = (0.5, 0.5)  # task 2's weighted loss is far larger: the step must lower it first
    d = epo_search_direction(L, J, p)
    assert isinstance(d, EPODirection) and d.mode == "balance" and d.non_uniformity > 1e-4
    assert d.non_uniformity == pytest.approx(non_uniformity(L, p).item())
    L_next = quadratics(torch.tensor([0.2, 0.1], dtype=torch.float64) - 1e-3 * d.alpha @ J)
    assert non_uniformity(L_next, p).item() < d.non_uniformity
    assert L_next[1].item() < L[1].item()


def test_epo_descent_on_ray_and_zero_gradient():
    # on the ray (uniform p, equal losses) at a Pareto-stationary point: descent mode, no loss rises
    theta = torch.tensor([1.0, 0.5], dtype=torch.float64)
    L, J = losses_and_jacobian(quadratics, theta)
    d = epo_search_direction(L, J, [1, 1])
    assert d.mode == "descent" and d.lp_success
    assert torch.allclose(d.alpha @ J, torch.zeros(2, dtype=torch.float64), atol=1e-7)
    d0 = epo_search_direction(torch.tensor([1.0, 1.0]), torch.zeros(2, 3), [1, 1])
    assert torch.equal(d0.alpha, torch.tensor([0.5, 0.5])) and d0.lp_success


def test_epo_dtype_and_validation():
    L = torch.tensor([1.0, 2.0], dtype=torch.float32)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float32)
    assert epo_search_direction(L, J, [0.5, 0.5]).alpha.dtype == torch.float32
    with pytest.raises(ValueError, match="2 tasks"):
        epo_search_direction(L, J, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        epo_search_direction(L, J, [-1.0, 2.0])
    with pytest.raises(ValueError, match="all zero"):
        epo_search_direction(L, J, [0.0, 0.0])
    with pytest.raises(ValueError, match="jacobian must be m x n"):
        epo_search_direction(L, torch.ones(3, 2), [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative losses"):
        epo_search_direction(torch.tensor([-1.0, 2.0]), J, [0.5, 0.5])
    with pytest.raises(ValueError, match="fallback"):
        epo_search_direction(L, J, [0.5, 0.5], fallback=[1.0])


def test_epo_fallback_when_lp_fails(monkeypatch):
    import scipy.optimize

    class Failed:
        status, x = 2, None

    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **k: Failed())
    L = torch.tensor([1.0, 2.0], dtype=torch.float64)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = epo_search_direction(L, J, [0.5, 0.5])
    assert not d.lp_success and torch.allclose(d.alpha, torch.tensor([0.5, 0.5], dtype=torch.float64))
    d = epo_search_direction(L, J, [0.5, 0.5], fallback=torch.tensor([0.9, 0.1]))
    assert not d.lp_success and torch.allclose(d.alpha, torch.tensor([0.9, 0.1], dtype=torch.float64))
    d = epo_search_direction(torch.tensor([1.0, 1.0]), J, [0.5, 0.5], fallback=[0.3, 0.7])
    assert d.mode == "descent" and not d.lp_success


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_epo_from_gram_equals_epo_from_jacobian(seed):
    """A training loop may hand over G = J·Jᵀ alone: same direction, mode and non-uniformity."""
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    losses = torch.rand(3, generator=gen, dtype=torch.float64) + 0.1
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    from_j = epo_search_direction(losses, J, p)
    from_g = epo_search_direction(losses, None, p, gram=J @ J.T)
    assert from_g.mode == from_j.mode and from_g.lp_success == from_j.lp_success
    assert from_g.non_uniformity == pytest.approx(from_j.non_uniformity)
    assert torch.allclose(from_g.alpha, from_j.alpha, atol=1e-9)
    with pytest.raises(ValueError, match="exactly one of jacobian and gram"):
        epo_search_direction(losses, J, p, gram=J @ J.T)
    with pytest.raises(ValueError, match="gram must be m x m"):
        epo_search_direction(losses, None, p, gram=J)
