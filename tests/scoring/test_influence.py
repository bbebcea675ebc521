"""Influence scorers against references: leave-one-out retraining on a strictly convex model, dense solves,
a dense evaluation of DataInf's Eq. 10, and compressed influence under lossless compressors."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradsift import CONFIG_DIR
from torch import nn

from gradsift.attribution.compressors import DropoutCompressor, IdentityCompressor
from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attribution.hessian import loss_hessian
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.influence import (CompressedInfluenceScorer, DataInfScorer, ExactInfluenceScorer, GradientTracingScorer, LiSSAScorer,
                                        SelfDataInfScorer, SelfLiSSAScorer)

ALPHA = 0.01  # L2 strength of the logistic regression = the damping that makes (H + damping) its exact Hessian


class LogReg(nn.Module):
    def __init__(self, d: int, c: int = 2):
        super().__init__()
        self.linear = nn.Linear(d, c, dtype=torch.float64)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(self.linear(batch["x"]), batch["label"], reduction="none")

    forward = per_sample_loss


def _data(n: int, seed: int, flip: float = 0.15) -> dict:
    rng = np.random.default_rng(seed)
    mix = np.array([[3.0, 0.0, 0.0], [1.5, 1.0, 0.0], [0.0, 0.4, 0.3]])  # anisotropic, correlated features
    x = rng.standard_normal((n, 3)) @ mix
    y = (x @ np.array([1.0, -2.0, 3.0]) + 0.5 * rng.standard_normal(n) > 0).astype(np.int64)
    flipped = rng.random(n) < flip
    y[flipped] = 1 - y[flipped]
    return {"x": torch.tensor(x), "label": torch.tensor(y), "index": torch.arange(n)}


def _objective(model: LogReg, data: dict, weights: torch.Tensor):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(torch.split(theta, [s.numel() for s in shapes]), shapes))))
        loss = (weights * torch.func.functional_call(model, parts, (data,), strict=False)).mean()
        return loss + ALPHA / 2 * (theta ** 2).sum()

    return f


def _fit(model: LogReg, data: dict, weights: torch.Tensor) -> None:
    """Minimise (1/n) sum_i w_i l_i + ALPHA/2 ||theta||^2 to convergence: float64 LBFGS, then Newton steps until
    the gradient norm is below 1e-12 (LBFGS's line search stalls around 1e-8 in float64)."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=100, tolerance_grad=1e-12, tolerance_change=0,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (weights * model.per_sample_loss(data)).mean()
        loss = loss + ALPHA / 2 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    f = _objective(model, data, weights)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for _ in range(10):
        grad = torch.func.grad(f)(theta)
        if grad.norm() < 1e-12:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(f)(theta), grad)
    else:
        raise AssertionError("logistic regression did not converge")
    torch.nn.utils.vector_to_parameters(theta, model.parameters())


def _val_loss(model: LogReg, data: dict) -> float:
    with torch.no_grad():
        return float(model.per_sample_loss(data).mean())


def _batches(data: dict, size: int) -> list[dict]:
    n = len(data["label"])
    return [{k: v[s:s + size] for k, v in data.items()} for s in range(0, n, size)]


@pytest.fixture(scope="module")
def loo() -> dict:
    """Scores of the fitted model and the actual validation-loss changes of 40 leave-one-out retrainings."""
    torch.manual_seed(0)
    train, val = _data(120, seed=1), _data(300, seed=2, flip=0.0)
    n = len(train["label"])
    model = LogReg(3)
    _fit(model, train, torch.ones(n, dtype=torch.float64))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = _val_loss(model, val)
    engine = PerSampleGradients(parameters="all", progress=False)
    inputs = ScoringInputs(train=engine.gather(model, _batches(train, 32)), reference=engine.gather(model, _batches(val, 64)),
                           extra={"hessian": loss_hessian(model, _batches(train, 32), "all")})
    removed = np.random.default_rng(3).permutation(n)[:40]
    actual = []
    for k in removed:
        model.load_state_dict(state)
        w = torch.ones(n, dtype=torch.float64)
        w[k] = 0.0
        _fit(model, train, w)
        actual.append(_val_loss(model, val) - base)
    return {"inputs": inputs, "removed": removed, "actual": np.array(actual), "n": n}


def test_exact_influence_predicts_leave_one_out(loo: dict) -> None:
    scores = ExactInfluenceScorer(hessian="exact", damping=ALPHA).fit_score(loo["inputs"])
    predicted = -scores[loo["removed"]] / loo["n"]  # removal changes the reference loss by -(1/n) I(z_k)
    assert np.corrcoef(predicted, loo["actual"])[0, 1] >= 0.95
    slope = predicted @ loo["actual"] / (predicted @ predicted)
    assert 0.8 < slope < 1.25
    # a high score means removal lowers the validation loss
    top = np.argsort(-scores[loo["removed"]])[:5]
    assert (loo["actual"][top] < 0).all()


def test_hessian_free_is_a_worse_predictor_here(loo: dict) -> None:
    """The LOO check above discriminates: dropping H^-1 (Gradient Tracing) predicts clearly worse."""
    exact = ExactInfluenceScorer(hessian="exact", damping=ALPHA).fit_score(loo["inputs"])[loo["removed"]]
    tracing = GradientTracingScorer().fit_score(loo["inputs"])[loo["removed"]]
    r_exact = np.corrcoef(-exact, loo["actual"])[0, 1]
    r_tracing = np.corrcoef(-tracing, loo["actual"])[0, 1]
    assert r_tracing < r_exact - 0.05


# -- dense references on random gradient matrices --------------------------------------------------------------

def _grad_set(n: int, blocks: list[tuple[str, int]], seed: int, scale: float = 1.0) -> GradientSet:
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for name, size in blocks:
        out.append(Block(name, start, start + size))
        start += size
    g = rng.standard_normal((n, start)) * scale * (1 + 3 * rng.random(start))  # unequal column scales
    return GradientSet(g, np.arange(n), rng.integers(0, 3, n), blocks=out)


@pytest.fixture
def grads() -> ScoringInputs:
    train = _grad_set(60, [("w", 12), ("b", 3)], seed=0)
    val = _grad_set(25, [("w", 12), ("b", 3)], seed=1)
    return ScoringInputs(train=train, reference=val, seed=0)


def _auto_damping(g: np.ndarray, blocks: list[Block]) -> list[float]:
    return [0.1 * np.mean(np.sum(g[:, b.start:b.stop] ** 2, axis=1)) / b.size for b in blocks]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_exact_gauss_newton_matches_dense_solve(grads: ScoringInputs) -> None:
    g, v = grads.train.grads, grads.reference.grads.mean(0)
    lam = _auto_damping(g, grads.train.blocks)
    damp = np.concatenate([np.full(b.size, l) for b, l in zip(grads.train.blocks, lam)])
    ref = -g @ np.linalg.solve(g.T @ g / len(g) + np.diag(damp), v)
    assert _rel(ExactInfluenceScorer(hessian="gauss_newton").fit_score(grads), ref) < 1e-10
    assert _rel(ExactInfluenceScorer(hessian="fisher", chunk_size=7).fit_score(grads), ref) < 1e-10


def test_gradient_tracing_is_negative_dot_product(grads: ScoringInputs) -> None:
    ref = -grads.train.grads @ grads.reference.grads.mean(0)
    np.testing.assert_allclose(GradientTracingScorer(chunk_size=8).fit_score(grads), ref, rtol=1e-12)


def _block_inverse(g: np.ndarray, blocks: list[Block], lam: list[float]) -> np.ndarray:
    """Dense block-diagonal (H_l + lambda_l I)^-1 with H_l = (1/n) G_l^T G_l."""
    inv = np.zeros((g.shape[1], g.shape[1]))
    for b, l in zip(blocks, lam):
        gb = g[:, b.start:b.stop]
        inv[b.start:b.stop, b.start:b.stop] = np.linalg.inv(gb.T @ gb / len(g) + l * np.eye(b.size))
    return inv


def test_lissa_converges_to_the_block_inverse(grads: ScoringInputs) -> None:
    g, v, blocks = grads.train.grads, grads.reference.grads.mean(0), grads.train.blocks
    inv = _block_inverse(g, blocks, _auto_damping(g, blocks))
    ref = inv @ v
    lissa = LiSSAScorer(depth=3000, scale="auto")
    assert _rel(lissa.ihvp(grads), ref) < 1e-3
    assert _rel(lissa.fit_score(grads), -g @ ref) < 1e-3
    # a fixed scale above lambda_max / 2 converges too; ten steps (the papers' default) do not
    lam_max = max(np.linalg.eigvalsh(np.linalg.inv(inv[b.start:b.stop, b.start:b.stop]))[-1] for b in blocks)
    assert _rel(LiSSAScorer(depth=3000, scale=lam_max).ihvp(grads), ref) < 1e-3
    assert _rel(LiSSAScorer(depth=10, scale=lam_max).ihvp(grads), ref) > 1e-2


def test_lissa_with_the_exact_hessian_matches_exact_influence(grads: ScoringInputs) -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((15, 15))
    grads.extra["hessian"] = a @ a.T / 15
    exact = ExactInfluenceScorer(hessian="exact", damping=0.1).fit_score(grads)
    lissa = LiSSAScorer(depth=4000, scale="auto", damping=0.1, hessian="exact", block_diagonal=False)
    assert lissa.needs_hessian and ExactInfluenceScorer().needs_hessian and not LiSSAScorer().needs_hessian
    assert _rel(lissa.fit_score(grads), exact) < 1e-3


def test_lissa_divergence_is_reported(grads: ScoringInputs) -> None:
    with pytest.raises(FloatingPointError, match="scorer.scale"):
        LiSSAScorer(depth=2000, scale=1e-3).fit_score(grads)


def _datainf_dense(g: np.ndarray, blocks: list[Block], lam: list[float]) -> np.ndarray:
    """Eq. 10 of the dropout paper, evaluated densely per block."""
    n, m = len(g), np.zeros((g.shape[1], g.shape[1]))
    for b, l in zip(blocks, lam):
        gb = g[:, b.start:b.stop]
        acc = sum(np.eye(b.size) - np.outer(x, x) / (l + x @ x) for x in gb)
        m[b.start:b.stop, b.start:b.stop] = acc / (n * l)
    return m


def test_datainf_matches_dense_eq10(grads: ScoringInputs) -> None:
    g, v, blocks = grads.train.grads, grads.reference.grads.mean(0), grads.train.blocks
    m = _datainf_dense(g, blocks, _auto_damping(g, blocks))
    assert _rel(DataInfScorer(chunk_size=16).fit_score(grads), -g @ m @ v) < 1e-6
    m = _datainf_dense(g, blocks, [0.3, 0.3])
    assert _rel(DataInfScorer(damping=0.3).fit_score(grads), -g @ m @ v) < 1e-6


def test_self_datainf_matches_dense_quadratic_form(grads: ScoringInputs) -> None:
    g, blocks = grads.train.grads, grads.train.blocks
    m = _datainf_dense(g, blocks, _auto_damping(g, blocks))
    ref = np.einsum("ij,jk,ik->i", g, m, g)
    assert _rel(SelfDataInfScorer().fit_score(grads), ref) < 1e-6
    assert _rel(SelfDataInfScorer(max_dense_dim=1, chunk_size=16).fit_score(grads), ref) < 1e-6  # Gram route


def test_self_lissa_converges_to_dense_self_influence(grads: ScoringInputs) -> None:
    g, blocks = grads.train.grads, grads.train.blocks
    inv = _block_inverse(g, blocks, _auto_damping(g, blocks))
    ref = np.einsum("ij,jk,ik->i", g, inv, g)
    assert _rel(SelfLiSSAScorer(depth=3000).fit_score(grads), ref) < 1e-3
    assert _rel(SelfLiSSAScorer(depth=3000, max_dense_dim=1, chunk_size=16).fit_score(grads), ref) < 1e-3  # matrix-free
    # ten steps: the dense polynomial and the matrix-free recursion are the same estimator
    np.testing.assert_allclose(SelfLiSSAScorer(depth=10).fit_score(grads), SelfLiSSAScorer(depth=10, max_dense_dim=1).fit_score(grads),
                               rtol=1e-9)


def _gather(compressor, train: dict, val: dict) -> ScoringInputs:
    torch.manual_seed(0)
    model = LogReg(3)
    engine = PerSampleGradients(parameters="all", compressor=compressor, progress=False)
    return ScoringInputs(train=engine.gather(model, _batches(train, 16)), reference=engine.gather(model, _batches(val, 16)))


def test_compressed_influence_with_lossless_compressors_equals_exact() -> None:
    """Eq. 3 with a lossless compressor is Eq. 1: identity, dropout at r = d, and a column permutation."""
    train, val = _data(80, seed=4), _data(40, seed=5)
    inputs = _gather(IdentityCompressor(), train, val)
    exact = ExactInfluenceScorer(hessian="gauss_newton", damping=0.05).fit_score(inputs)
    np.testing.assert_allclose(CompressedInfluenceScorer(damping=0.05).fit_score(inputs), exact, rtol=1e-10)
    full_dropout = _gather(DropoutCompressor(r=inputs.train.dim, seed=3), train, val)
    np.testing.assert_allclose(CompressedInfluenceScorer(damping=0.05).fit_score(full_dropout), exact, rtol=1e-6)
    perm = np.random.default_rng(0).permutation(inputs.train.dim)
    permuted = ScoringInputs(train=GradientSet(inputs.train.grads[:, perm], inputs.train.index, inputs.train.labels),
                             reference=GradientSet(inputs.reference.grads[:, perm], inputs.reference.index, inputs.reference.labels))
    np.testing.assert_allclose(CompressedInfluenceScorer(damping=0.05).fit_score(permuted), exact, rtol=1e-8)


def test_compressed_influence_with_dropout_is_eq3() -> None:
    """r < d: -(I~ v)^T (I~ H I~^T + lambda I)^-1 I~ g with H = (1/n) G^T G of the full gradients (Eq. 3)."""
    train, val = _data(80, seed=4), _data(40, seed=5)
    full = _gather(IdentityCompressor(), train, val)
    dropout = DropoutCompressor(r=5, seed=1)
    compressed = _gather(dropout, train, val)
    g, v = full.train.grads.astype(np.float64), full.reference.grads.astype(np.float64).mean(0)
    keep = np.eye(g.shape[1])[dropout.indices]  # the r x d selection matrix I~
    h = g.T @ g / len(g)
    ref = -(keep @ v) @ np.linalg.solve(keep @ h @ keep.T + 0.05 * np.eye(5), keep @ g.T)
    np.testing.assert_allclose(CompressedInfluenceScorer(damping=0.05).fit_score(compressed), ref, rtol=1e-6)


def test_bad_configuration_is_reported(grads: ScoringInputs) -> None:
    with pytest.raises(ValueError, match="scorer.damping"):
        DataInfScorer(damping="big").fit_score(grads)
    with pytest.raises(ValueError, match="scorer.hessian"):
        ExactInfluenceScorer(hessian="kfac")
    with pytest.raises(ValueError, match="extra\\['hessian'\\]"):
        ExactInfluenceScorer(hessian="exact").fit_score(grads)
    grads.extra["hessian"] = np.eye(4)
    with pytest.raises(ValueError, match="uncompressed"):
        ExactInfluenceScorer(hessian="exact").fit_score(grads)
    with pytest.raises(ValueError, match="needs reference"):
        DataInfScorer().fit_score(ScoringInputs(train=grads.train))
    assert SelfDataInfScorer().fit_score(ScoringInputs(train=grads.train)).shape == (grads.train.n,)


CONF = CONFIG_DIR / "scorer"


@pytest.mark.parametrize("name,display", [
    ("exact", "Exact Hessian"), ("tracin", "Gradient Tracing"), ("lissa", "LiSSA"), ("datainf", "DataInf"),
    ("self_lissa", "Self-LiSSA"), ("self_datainf", "Self-DataInf"), ("compressed_influence", "Orig.")])
def test_configs_instantiate_and_score(grads: ScoringInputs, name: str, display: str) -> None:
    scorer = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert scorer.display_name == display
    if getattr(scorer, "needs_hessian", False):
        grads.extra["hessian"] = grads.train.grads.T @ grads.train.grads / grads.train.n
    assert np.isfinite(scorer.fit_score(grads)).all()


def test_exact_refuses_a_hessian_too_large(grads: ScoringInputs) -> None:
    with pytest.raises(ValueError, match="scorer.max_dim"):
        CompressedInfluenceScorer(max_dim=10).fit_score(grads)


def test_exact_hessian_scorer_refuses_compressed_gradients() -> None:
    with pytest.raises(ValueError, match="compressor=identity"):
        ExactInfluenceScorer(hessian="exact").check_compressor(DropoutCompressor(r=8))
    ExactInfluenceScorer(hessian="exact").check_compressor(IdentityCompressor())
    LiSSAScorer().check_compressor(DropoutCompressor(r=8))  # Gauss-Newton: any compressor
