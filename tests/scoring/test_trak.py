"""TRAK against MadryLab's traker 0.3.2 (skipped without it) on a small MLP, two checkpoints: the same projection
(ours, through traker's projector interface; or none) gives the same scores up to traker's 1/#parameters factor;
and the margin output against its definition."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.attribution.compressors import GaussianCompressor, IdentityCompressor
from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attribution.model_output import margin_output, negative_margin
from gradsift.attributor import predict_probs
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.checkpoints import CheckpointInputs
from gradsift.scoring.trak import TRAKScorer

N, M = 200, 20


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # traker calls the model on images
        return self.net(x)

    def logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"])

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["label"], reduction="none")


def _data() -> tuple[list[dict], list[dict], list[dict]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N + M, 4, generator=g), torch.randint(0, 3, (N + M,), generator=g)
    train = [{"x": x[s:s + 50], "label": y[s:s + 50], "index": torch.arange(s, s + 50)} for s in range(0, N, 50)]
    target = [{"x": x[N:], "label": y[N:], "index": torch.arange(N, N + M)}]
    states = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        states.append({k: v.clone() for k, v in _MLP().state_dict().items()})
    return train, target, states


def _ours(model: _MLP, train, target, states, compressor, lambda_reg: float = 0.0) -> np.ndarray:
    eng = PerSampleGradients("all", compressor=compressor, progress=False)
    ckpts = []
    for i, state in enumerate(states):
        model.load_state_dict(state)
        with margin_output(model):
            ckpts.append(CheckpointInputs(eng.gather(model, train), eng.gather(model, target),
                                          predict_probs(model, train), name=f"model {i}"))
    inputs = ScoringInputs(train=ckpts[-1].train, reference=ckpts[-1].reference, train_probs=ckpts[-1].train_probs,
                           extra={"checkpoints": ckpts})
    return TRAKScorer(lambda_reg=lambda_reg).fit_score(inputs)


def _traker(model: _MLP, train, target, states, projector, lambda_reg: float, tmp_path) -> np.ndarray:
    from trak import TRAKer

    tr = TRAKer(model=model, task="image_classification", train_set_size=N, save_dir=str(tmp_path), device="cpu",
                projector=projector, use_half_precision=False, logging_level=logging.ERROR, lambda_reg=lambda_reg)
    for i, state in enumerate(states):
        tr.load_checkpoint(state, model_id=i)
        for b in train:
            tr.featurize(batch=(b["x"], b["label"]), num_samples=len(b["label"]))
    tr.finalize_features()
    for i, state in enumerate(states):
        tr.start_scoring_checkpoint(exp_name="t", checkpoint=state, model_id=i, num_targets=M)
        tr.score(batch=(target[0]["x"], target[0]["label"]), num_samples=M)
    return np.asarray(tr.finalize_scores(exp_name="t"), dtype=np.float64)  # [N, M], positive = helpful


@pytest.mark.parametrize("projection", ["gaussian", "none"])
def test_matches_traker(projection: str, tmp_path) -> None:
    """traker divides projected gradients by sqrt(#parameters), which scales its scores by 1/#parameters after the
    1/mean|K| normalisation: ours = -mean_t(traker) * #parameters, with our lambda_reg = traker's * #parameters.
    Uncompressed margin gradients are rank-deficient (shifting every logit leaves the margin unchanged), so that
    case needs a ridge. Measured max relative difference 6e-5 (projected) and 4e-5 (ridge), float32."""
    pytest.importorskip("trak")
    from trak.projectors import AbstractProjector, NoOpProjector
    from trak.utils import vectorize

    train, target, states = _data()
    model = _MLP()
    d = sum(p.numel() for p in model.parameters())
    compressor = GaussianCompressor(32, seed=5) if projection == "gaussian" else IdentityCompressor()

    class _Ours(AbstractProjector):
        """traker's projector interface over our compressor (set up by the engine on the same parameter blocks)."""

        def __init__(self):
            super().__init__(d, 32, 0, "normal", "cpu")

        def project(self, grads, model_id: int) -> torch.Tensor:
            return compressor.compress(vectorize(grads, device="cpu"))

    ridge = 0.0 if projection == "gaussian" else 1e-3
    ours = _ours(model, train, target, states, compressor, lambda_reg=ridge * d)
    projector = _Ours() if projection == "gaussian" else NoOpProjector(d, 0, 0, "normal", "cpu")
    theirs = -_traker(model, train, target, states, projector, ridge, tmp_path).mean(1) * d
    assert np.corrcoef(ours, theirs)[0, 1] >= 0.999
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()


def test_one_checkpoint_equals_the_formula() -> None:
    """-(Phi (Phi^T Phi)^-1 / mean|.| mean_t phi_t) * (1 - p_y) for the final model alone."""
    train, target, states = _data()
    model = _MLP()
    model.load_state_dict(states[0])
    eng, full = PerSampleGradients("all", GaussianCompressor(32, seed=1), progress=False), PerSampleGradients("all", progress=False)
    with margin_output(model):
        gt, gr = eng.gather(model, train), eng.gather(model, target)
        ft, fr = full.gather(model, train), full.gather(model, target)
    probs = predict_probs(model, train)
    scores = TRAKScorer().fit_score(ScoringInputs(train=gt, reference=gr, train_probs=probs))
    phi = gt.grads.astype(np.float64)
    k = np.linalg.inv(phi.T @ phi)
    q = 1 - probs[np.arange(N), gt.labels]
    np.testing.assert_allclose(scores, -(phi @ (k / np.abs(k).mean()) @ gr.grads.astype(np.float64).mean(0)) * q, rtol=1e-6, atol=1e-9)
    # rank-deficient kernels (k > n; the logit-shift null space of unprojected margins): the ridgeless limit
    for tr, rf, pr in [(_rows(gt, 20), gr, probs[:20]), (ft, fr, probs)]:
        pinv = TRAKScorer().fit_score(ScoringInputs(train=tr, reference=rf, train_probs=pr))
        ridge = TRAKScorer(lambda_reg=1e-6).fit_score(ScoringInputs(train=tr, reference=rf, train_probs=pr))
        assert np.corrcoef(pinv, ridge)[0, 1] > 0.999


def test_projection_at_scoring_time_equals_projection_while_gathering() -> None:
    """The projector applied to stored gradients is the engine's compressor with the same seed (CPU)."""
    train, target, states = _data()
    model = _MLP()
    model.load_state_dict(states[1])
    full, proj = PerSampleGradients("all", progress=False), PerSampleGradients("all", GaussianCompressor(24, seed=3),
                                                                                 progress=False)
    with margin_output(model):
        ft, fr, pt, pr = (e.gather(model, d) for e in (full, proj) for d in (train, target))
    probs = predict_probs(model, train)
    late = TRAKScorer(projector=GaussianCompressor(24, seed=3)).fit_score(ScoringInputs(ft, fr, probs))
    early = TRAKScorer().fit_score(ScoringInputs(pt, pr, probs))
    np.testing.assert_allclose(late, early, rtol=1e-4, atol=1e-6 * np.abs(early).max())


def _rows(gs, k: int):
    from gradsift.attribution.gradient_set import GradientSet

    return GradientSet(gs.grads[:k], gs.index[:k], gs.labels[:k], blocks=gs.blocks)


def test_margin_output_is_log_odds_of_the_label() -> None:
    logits = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    p = logits.softmax(-1)[torch.arange(7), y]
    torch.testing.assert_close(negative_margin(logits, y), -torch.log(p / (1 - p)))
    model = _MLP()
    batch = {"x": torch.randn(5, 4), "label": torch.randint(0, 3, (5,)), "index": torch.arange(5)}
    with margin_output(model):
        torch.testing.assert_close(model.per_sample_loss(batch), negative_margin(model.logits(batch), batch["label"]))
    torch.testing.assert_close(model.per_sample_loss(batch),
                               F.cross_entropy(model.logits(batch), batch["label"], reduction="none"))
