"""Tests of latentda.inference.mcmc: MALA / HMC exactness, adaptation, preconditioning, ESS, R-hat.

The samplers are checked against analytic answers: Gaussian moments (within Monte-Carlo standard
errors from the computed ESS), exact invariance of the kernels (chains started from the target
stay there: chi-square law of the Mahalanobis distance), a bimodal posterior against numerical
quadrature, and the ESS of AR(1) chains against its closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from latentda.inference.mcmc import (
    MCMCResult,
    effective_sample_size,
    hmc,
    mala,
    split_rhat,
)

MEAN = np.array([1.0, -2.0])
COV = np.array([[2.0, 1.2], [1.2, 1.0]])
CHOL = np.linalg.cholesky(COV)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian_log_prob(mean: np.ndarray, cov: np.ndarray):
    m = torch.as_tensor(mean, dtype=torch.float64)
    prec = torch.as_tensor(np.linalg.inv(cov), dtype=torch.float64)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        r = x - m
        return -0.5 * ((r @ prec) * r).sum(-1)

    return log_prob


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_moments(res: MCMCResult, mean: np.ndarray, cov: np.ndarray, n_se: float = 4.0):
    """Sample mean and covariance within ``n_se`` Monte-Carlo standard errors.

    The standard error of each covariance entry uses the ESS of the products
    ``(x_i - m_i)(x_j - m_j)``, which for HMC is far below the ESS of the mean.
    """
    s = res.samples
    flat = s.reshape(-1, s.shape[-1])
    se_mean = np.sqrt(flat.var(axis=0) / res.ess)
    assert np.all(np.abs(flat.mean(axis=0) - mean) < n_se * se_mean), (flat.mean(0), se_mean)
    r = s - mean
    for i in range(len(mean)):
        for j in range(i, len(mean)):
            prod = r[..., i] * r[..., j]
            ess = effective_sample_size(prod[..., None])[0]
            se = prod.std() / np.sqrt(ess)
            assert abs(prod.mean() - cov[i, j]) < n_se * se, (i, j, prod.mean(), cov[i, j], se)
            assert abs(prod.mean() - cov[i, j]) < 0.25 * np.sqrt(cov[i, i] * cov[j, j])


# ------------------------------------------------------------------------------------------
# 1. correlated Gaussian from a poor start
# ------------------------------------------------------------------------------------------


def test_mala_gaussian_moments_acceptance_rhat():
    x0 = np.tile([8.0, 6.0], (8, 1))
    res = mala(gaussian_log_prob(MEAN, COV), x0, steps=2000, generator=gen(1))
    assert res.method == "mala"
    assert res.samples.shape == (8, 1000, 2) and res.log_prob.shape == (8, 1000)
    assert res.samples.dtype == np.float64
    check_moments(res, MEAN, COV)
    assert abs(res.accept_rate - 0.574) < 0.1
    assert res.accept_rate_chain.shape == (8,)
    assert np.all(res.rhat < 1.05)
    assert np.all(res.ess > 100)
    # log_prob holds the target at the kept draws
    lp = gaussian_log_prob(MEAN, COV)(torch.as_tensor(res.samples.reshape(-1, 2))).numpy()
    np.testing.assert_allclose(res.log_prob.ravel(), lp, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(res.last, res.samples[:, -1])


def test_hmc_gaussian_moments_acceptance_rhat():
    x0 = np.tile([8.0, 6.0], (8, 1))
    res = hmc(gaussian_log_prob(MEAN, COV), x0, steps=800, target_accept=0.8, generator=gen(2))
    assert res.method == "hmc"
    assert res.samples.shape == (8, 400, 2)
    check_moments(res, MEAN, COV)
    assert abs(res.accept_rate - 0.8) < 0.1
    assert np.all(res.rhat < 1.05)
    # jittered leapfrog: on average (1 + 10) / 2 gradients per iteration
    assert 800 * 4.5 < res.n_grad < 800 * 6.5


# ------------------------------------------------------------------------------------------
# 2. exact invariance (the MH corrections with preconditioning, drift truncation, leapfrog)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,kw", [
    ("mala", dict(step_size=0.8)),
    ("mala", dict(step_size=1.0, precond=np.array([1.5, 0.5]))),
    ("mala", dict(step_size=1.2, precond=np.array([[1.0, 0.0], [0.9, 0.6]]))),
    ("mala", dict(step_size=0.8, drift_clip=0.3)),
    ("hmc", dict(step_size=0.6)),
    ("hmc", dict(step_size=1.2, precond=np.array([[1.0, 0.0], [0.9, 0.6]]))),
])
def test_kernels_leave_target_invariant(method, kw):
    """Chains started at exact draws stay exactly distributed: 2U ~ chi2(2) after 10 moves.

    The step sizes are large (acceptance 0.25-0.85), where an unadjusted or wrongly
    corrected kernel is far off (e.g. MALA with a symmetric-proposal ratio: mean U ~ 0.77).
    """
    n = 20000
    g = gen(5)
    x0 = torch.as_tensor(MEAN) + torch.randn(n, 2, generator=g, dtype=torch.float64) @ \
        torch.as_tensor(CHOL).T
    sampler = mala if method == "mala" else hmc
    lp = gaussian_log_prob(MEAN, COV)
    res = sampler(lp, x0, steps=10, burn_in=0, adapt=False, generator=gen(1), **kw)
    assert res.step_size == kw["step_size"]
    assert 0.2 < res.accept_rate < 0.95
    u = -lp(torch.as_tensor(res.last)).numpy()
    assert abs(u.mean() - 1.0) < 4.0 / np.sqrt(n)  # U ~ Exp(1) has sd 1
    assert stats.kstest(2.0 * u, "chi2", args=(2,)).pvalue > 1e-3
    np.testing.assert_array_less(np.abs(res.last.mean(0) - MEAN),
                                 4.0 * np.sqrt(np.diag(COV) / n))


# ------------------------------------------------------------------------------------------
# 3. preconditioning
# ------------------------------------------------------------------------------------------


def test_mala_preconditioning_raises_ess_per_gradient():
    lp = gaussian_log_prob(MEAN, COV)
    x0 = np.tile([8.0, 6.0], (4, 1))
    plain = mala(lp, x0, steps=1000, generator=gen(3))
    pre = mala(lp, x0, steps=1000, precond=CHOL, generator=gen(3))
    ratio = (pre.ess / pre.n_grad).min() / (plain.ess / plain.n_grad).min()
    assert ratio > 3.0, ratio
    check_moments(pre, MEAN, COV)


def test_hmc_preconditioning_raises_ess_per_gradient():
    cov = np.array([[1.0, 0.98], [0.98, 1.0]])  # condition number 99
    lp = gaussian_log_prob(np.zeros(2), cov)
    x0 = np.tile([3.0, -3.0], (4, 1))
    plain = hmc(lp, x0, steps=400, generator=gen(0))
    pre = hmc(lp, x0, steps=400, precond=np.linalg.cholesky(cov), generator=gen(0))
    ratio = (pre.ess / pre.n_grad).min() / (plain.ess / plain.n_grad).min()
    assert ratio > 1.5, ratio
    assert np.all(pre.rhat < 1.05)


def test_diagonal_precond_matches_matrix_and_identity():
    lp = gaussian_log_prob(MEAN, COV)
    x0 = np.tile([3.0, 0.0], (3, 1))
    for sampler in (mala, hmc):
        plain = sampler(lp, x0, steps=40, generator=gen(7))
        ones = sampler(lp, x0, steps=40, precond=np.ones(2), generator=gen(7))
        np.testing.assert_array_equal(plain.samples, ones.samples)
        d = np.array([1.3, 0.7])
        vec = sampler(lp, x0, steps=40, precond=d, generator=gen(7))
        mat = sampler(lp, x0, steps=40, precond=torch.diag(torch.as_tensor(d)), generator=gen(7))
        np.testing.assert_allclose(vec.samples, mat.samples, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# 4. sign-ambiguous posterior: x ~ N(0, 2^2), y = x^2 + e, e ~ N(0, 0.5^2), y = 4
# ------------------------------------------------------------------------------------------

SIGMA_OBS = 0.5
Y_OBS = 4.0


def square_log_post(x: torch.Tensor) -> torch.Tensor:
    x = x[:, 0]
    return -x**2 / 8.0 - (Y_OBS - x**2) ** 2 / (2.0 * SIGMA_OBS**2)


def quadrature_moments() -> tuple[float, float]:
    grid = np.linspace(-8.0, 8.0, 400001)
    logp = -grid**2 / 8.0 - (Y_OBS - grid**2) ** 2 / (2.0 * SIGMA_OBS**2)
    w = np.exp(logp - logp.max())
    pos = grid > 0
    mean_pos = float((grid[pos] * w[pos]).sum() / w[pos].sum())
    std = float(np.sqrt((grid**2 * w).sum() / w.sum()))  # the mean is 0 by symmetry
    return mean_pos, std


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_sign_ambiguous_posterior_against_quadrature(method):
    """Two modes near ±2 (sd ~0.125) separated by a 32-nat barrier: chains started from the
    prior settle in the mode on their side, so the mode weights come from the prior draws'
    signs (0.5 by symmetry), and the within-mode moments must match quadrature.

    Plain MALA with a shared step size strands chains started far in the stiff quartic tails
    (|x| > ~4: the drift (eps^2/2)|grad| overshoots and every proposal is rejected), so the
    MALA run uses the truncated drift (MALTA) which leaves the bulk untouched.
    """
    n = 2000
    x0 = 2.0 * torch.randn(n, 1, generator=gen(0), dtype=torch.float64)
    if method == "mala":
        res = mala(square_log_post, x0, steps=400, drift_clip=10.0, generator=gen(1))
    else:
        res = hmc(square_log_post, x0, steps=200, generator=gen(1))
    s = res.samples[..., 0]
    assert np.all(np.isfinite(s))
    assert abs(np.mean(s > 0) - 0.5) < 0.05
    # no chain crossed the barrier or stayed behind in the tails
    assert np.all(np.abs(s) > 1.0) and np.all(np.abs(s) < 3.5)
    assert res.accept_rate_chain.min() > 0.2
    mean_pos, std = quadrature_moments()
    assert abs(s[s > 0].mean() - mean_pos) < 0.02
    assert abs(-s[s < 0].mean() - mean_pos) < 0.02
    assert abs(s.std() - std) < 0.02
    # chains do not mix between modes: ESS is about the number of chains, R-hat huge
    assert res.ess[0] < 3 * n and res.rhat[0] > 1.5


# ------------------------------------------------------------------------------------------
# 5. ESS and split-R-hat
# ------------------------------------------------------------------------------------------


def ar1(rng: np.random.Generator, n_chains: int, n: int, phi: float) -> np.ndarray:
    x = np.empty((n_chains, n))
    x[:, 0] = rng.standard_normal(n_chains)
    noise = np.sqrt(1.0 - phi**2) * rng.standard_normal((n_chains, n))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def test_ess_iid(rng):
    s = rng.standard_normal((4, 2500, 3))
    ess = effective_sample_size(s)
    assert ess.shape == (3,)
    np.testing.assert_allclose(ess, 10000, rtol=0.15)
    one = effective_sample_size(rng.standard_normal((1, 2000, 1)))
    np.testing.assert_allclose(one, 2000, rtol=0.15)


@pytest.mark.parametrize("n_chains,n", [(4, 5000), (1, 20000)])
def test_ess_ar1(rng, n_chains, n):
    phi = 0.9
    s = ar1(rng, n_chains, n, phi)[..., None]
    expected = n_chains * n * (1 - phi) / (1 + phi)
    np.testing.assert_allclose(effective_sample_size(s), expected, rtol=0.25)
    # antithetic chain: ESS exceeds the number of draws
    anti = ar1(rng, 2, 4000, -0.5)[..., None]
    assert effective_sample_size(anti)[0] > 1.5 * 8000


def test_split_rhat(rng):
    iid = rng.standard_normal((4, 2000, 2))
    np.testing.assert_allclose(split_rhat(iid), 1.0, atol=0.01)
    stuck = rng.standard_normal((4, 500, 1)) + np.array([0.0, 0.0, 1.0, 2.0])[:, None, None]
    assert split_rhat(stuck)[0] > 1.1
    # a single drifting chain: its halves disagree
    drift = (rng.standard_normal(1000) + np.linspace(0, 3, 1000))[None, :, None]
    assert split_rhat(drift)[0] > 1.1
    assert split_rhat(rng.standard_normal((1, 1000, 1)))[0] < 1.02
    # zero variance: undefined
    assert np.isnan(split_rhat(np.ones((2, 10, 1))))[0]
    assert np.isnan(effective_sample_size(np.ones((2, 10, 1))))[0]


# ------------------------------------------------------------------------------------------
# 6. reproducibility, thinning, cost accounting, no_grad, support boundaries
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [mala, hmc])
def test_reproducible_and_thinning(sampler):
    lp = gaussian_log_prob(MEAN, COV)
    x0 = torch.tensor([[0.0, 0.0], [2.0, -1.0]])  # float32 input is promoted
    a = sampler(lp, x0, steps=60, burn_in=20, generator=gen(11))
    b = sampler(lp, x0, steps=60, burn_in=20, generator=gen(11))
    c = sampler(lp, x0, steps=60, burn_in=20, generator=gen(12))
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.step_size == b.step_size and a.n_grad == b.n_grad
    assert not np.array_equal(a.samples, c.samples)
    t = sampler(lp, x0, steps=60, burn_in=20, thin=3, generator=gen(11))
    # 40 kept states, every third counting back from the last: indices 0, 3, ..., 39
    assert t.samples.shape == (2, 14, 2)
    np.testing.assert_array_equal(t.samples, a.samples[:, 0::3])
    np.testing.assert_array_equal(t.last, a.last)


def test_gradient_count_and_no_grad():
    lp = gaussian_log_prob(MEAN, COV)
    x0 = np.zeros((3, 2))
    calls = []

    def counted(x):
        calls.append(x.shape)
        return lp(x)

    with torch.no_grad():
        r = mala(counted, x0, steps=50, step_size=0.5, generator=gen(0))
    assert r.n_grad == 51 == len(calls)  # x0 once, then one evaluation per iteration
    assert np.all(np.isfinite(r.samples))
    calls.clear()
    r = hmc(counted, x0, steps=20, step_size=0.3, n_leapfrog=7, jitter_steps=False,
            generator=gen(0))
    assert r.n_grad == 1 + 20 * 7 == len(calls)
    # adapt=False without burn-in keeps the given step size
    r = mala(lp, x0, steps=10, step_size=0.37, adapt=False, generator=gen(0))
    assert r.step_size == 0.37 and r.samples.shape == (3, 5, 2)


def gamma2_log_prob(x: torch.Tensor) -> torch.Tensor:
    """Gamma(2, 1) per coordinate: log x - x, NaN for x < 0 (torch.log of a negative)."""
    return (torch.log(x) - x).sum(-1)


def half_line_log_prob(x: torch.Tensor) -> torch.Tensor:
    """Exponential(1) on x > 0, -inf elsewhere."""
    x = x[:, 0]
    return torch.where(x > 0, -x, torch.full_like(x, -torch.inf))


@pytest.mark.parametrize("sampler", [mala, hmc])
def test_nonfinite_proposals_rejected(sampler):
    x0 = np.full((8, 1), 0.05)
    res = sampler(gamma2_log_prob, x0, steps=600, generator=gen(4))
    s = res.samples
    assert np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.isfinite(res.log_prob))
    se = np.sqrt(2.0 / res.ess[0])
    assert abs(s.mean() - 2.0) < 4 * se  # Gamma(2, 1) has mean 2, variance 2
    res = sampler(half_line_log_prob, x0, steps=400, step_size=1.5, generator=gen(4))
    assert np.all(np.isfinite(res.samples)) and np.all(res.samples > 0)
    assert abs(res.samples.mean() - 1.0) < 4 * np.sqrt(1.0 / res.ess[0])


# ------------------------------------------------------------------------------------------
# 7. bad input
# ------------------------------------------------------------------------------------------

LP = gaussian_log_prob(MEAN, COV)
X0 = np.zeros((2, 2))


@pytest.mark.parametrize("kwargs,field", [
    (dict(steps=0), "steps"),
    (dict(steps=10, burn_in=10), "burn_in"),
    (dict(steps=10, burn_in=-1), "burn_in"),
    (dict(steps=10, thin=0), "thin"),
    (dict(steps=10, target_accept=1.0), "target_accept"),
    (dict(steps=10, target_accept=0.0), "target_accept"),
    (dict(steps=10, step_size=0.0), "step_size"),
    (dict(steps=10, step_size=float("nan")), "step_size"),
    (dict(steps=10, precond=np.eye(3)), "precond"),
    (dict(steps=10, precond=np.array([1.0, -1.0])), "precond"),
    (dict(steps=10, precond=np.zeros((2, 2))), "precond"),
    (dict(steps=10, generator=np.random.default_rng(0)), "generator"),
    (dict(steps=10, adapt=1), "adapt"),
])
@pytest.mark.parametrize("sampler", [mala, hmc])
def test_bad_arguments(sampler, kwargs, field):
    with pytest.raises(ValueError, match=field):
        sampler(LP, X0, **kwargs)


@pytest.mark.parametrize("x0", [np.zeros(2), np.zeros((0, 2)), np.array([[0.0, np.nan]]),
                                np.array([["a", "b"]])])
def test_bad_x0(x0):
    with pytest.raises(ValueError, match="x0"):
        mala(LP, x0, steps=5)


def test_bad_misc():
    with pytest.raises(ValueError, match="n_leapfrog"):
        hmc(LP, X0, steps=5, n_leapfrog=0)
    with pytest.raises(ValueError, match="drift_clip"):
        mala(LP, X0, steps=5, drift_clip=-1.0)
    with pytest.raises(ValueError, match="x0"):  # outside the support
        mala(half_line_log_prob, np.array([[1.0], [-1.0]]), steps=5)
    with pytest.raises(ValueError, match="log_prob"):
        mala(lambda x: x.sum(), X0, steps=5)
    with pytest.raises(ValueError, match="log_prob"):
        hmc(None, X0, steps=5)
    with pytest.raises(ValueError, match="samples"):
        effective_sample_size(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="samples"):
        split_rhat(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="samples"):
        split_rhat(np.full((2, 10, 1), np.inf))


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", [mala, hmc])
def test_runs_on_cuda(sampler):
    x0 = torch.tensor([[8.0, 6.0]] * 8, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    res = sampler(gaussian_log_prob_on(MEAN, COV, "cuda"), x0, steps=1000,
                  precond=torch.as_tensor(CHOL, device="cuda"), generator=g)
    assert isinstance(res.samples, np.ndarray) and np.all(np.isfinite(res.samples))
    check_moments(res, MEAN, COV)
    with pytest.raises(ValueError, match="generator"):
        sampler(gaussian_log_prob_on(MEAN, COV, "cuda"), x0, steps=5, generator=gen(0))


def gaussian_log_prob_on(mean: np.ndarray, cov: np.ndarray, device: str):
    m = torch.as_tensor(mean, dtype=torch.float64, device=device)
    prec = torch.as_tensor(np.linalg.inv(cov), dtype=torch.float64, device=device)
    return lambda x: -0.5 * (((x - m) @ prec) * (x - m)).sum(-1)
