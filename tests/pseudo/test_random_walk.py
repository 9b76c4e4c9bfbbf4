"""Random walk: affinities and transitions against loops, squaring vs repeated steps, dense vs windowed, clusters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from weakseg.pseudo import RandomWalk
from weakseg.pseudo.random_walk import (
    affinity,
    negligible,
    transition,
    walk,
    window_affinity,
    window_offsets,
    window_radii,
)


def random_inputs(b: int, k: int, d: int, h: int, w: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``B×K×h×w`` scores in [0, 1) and ``B×D×h×w`` embeddings with some structure (a smooth field plus noise)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(b, k, h, w, generator=g, dtype=torch.float64)
    base = torch.randn(b, d, 1, 1, generator=g, dtype=torch.float64)
    embeddings = base + 0.3 * torch.randn(b, d, h, w, generator=g, dtype=torch.float64)
    return scores, embeddings


def reference_affinity(
    embeddings: Tensor, gamma: float, beta: float, valid: Tensor | None, radius: int | None
) -> Tensor:
    """``B×N×N`` affinities, one pair at a time: ``exp(γ(cos − 1))^β``, 1 on the diagonal, 0 for invalid pairs."""
    b, _, h, w = embeddings.shape
    pixels = [(y, x) for y in range(h) for x in range(w)]
    out = torch.zeros(b, h * w, h * w, dtype=torch.float64)
    for n in range(b):
        for i, (yi, xi) in enumerate(pixels):
            for j, (yj, xj) in enumerate(pixels):
                if i == j:
                    out[n, i, j] = 1.0
                    continue
                if valid is not None and not (valid[n, yi, xi] and valid[n, yj, xj]):
                    continue
                if radius is not None and max(abs(yi - yj), abs(xi - xj)) > radius:
                    continue
                a, c = embeddings[n, :, yi, xi], embeddings[n, :, yj, xj]
                cos = float(a @ c) / math.sqrt(float(a @ a) * float(c @ c))
                out[n, i, j] = math.exp(gamma * (cos - 1)) ** beta
    return out


def reference_walk(scores: Tensor, aff: Tensor, steps: int) -> Tensor:
    """``steps`` times ``s_j ← Σ_i s_i A_ij / Σ_i A_ij``, with explicit sums over ``i`` (``scores``: ``K×N``)."""
    n = aff.shape[0]
    column = [sum(float(aff[i, j]) for i in range(n)) for j in range(n)]
    trans = torch.tensor([[float(aff[i, j]) / column[j] for j in range(n)] for i in range(n)], dtype=torch.float64)
    for _ in range(steps):
        scores = torch.stack([sum(scores[:, i] * trans[i, j] for i in range(n)) for j in range(n)], 1)
    return scores


@pytest.mark.parametrize(("gamma", "beta"), [(5.0, 20.0), (2.0, 3.0)])
def test_affinity_and_transition_match_loops(gamma: float, beta: float) -> None:
    _, embeddings = random_inputs(2, 1, 6, 4, 5)
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[1, 1, 2] = valid[1, 3, 0] = False
    aff = affinity(embeddings, gamma, beta, valid)
    expected = reference_affinity(embeddings, gamma, beta, valid, None)
    torch.testing.assert_close(aff, expected, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(aff, aff.transpose(1, 2), rtol=1e-12, atol=0)
    trans = transition(aff)
    torch.testing.assert_close(trans.sum(1), torch.ones(2, 20, dtype=torch.float64))
    torch.testing.assert_close(trans, expected / expected.sum(1, keepdim=True))
    # An invalid pixel links only to itself: an identity column and row.
    assert trans[1, 7, 7] == 1 and trans[1, 7].sum() == 1 and trans[1, :, 7].sum() == 1


def test_dense_walk_matches_loop_and_matrix_power() -> None:
    scores, embeddings = random_inputs(2, 3, 8, 4, 5)
    rw = RandomWalk(gamma=3.0, beta=2.0, log2_steps=2)
    out = rw(scores, embeddings)
    for n in range(2):
        aff = reference_affinity(embeddings[n : n + 1], 3.0, 2.0, None, None)[0]
        expected = reference_walk(scores[n].reshape(3, 20), aff, 4).reshape(3, 4, 5)
        torch.testing.assert_close(out[n], expected, rtol=0, atol=1e-10)
        power = torch.linalg.matrix_power(transition(aff), 4)
        torch.testing.assert_close(out[n], (scores[n].reshape(3, 20) @ power).reshape(3, 4, 5), rtol=0, atol=1e-10)
    assert (out - scores).abs().max() > 0.05


@pytest.mark.parametrize(("k", "log2_steps"), [(3, 6), (20, 3), (1, 0)])
def test_squaring_and_repeated_products_agree(k: int, log2_steps: int) -> None:
    scores, embeddings = random_inputs(1, k, 16, 6, 7, seed=1)
    trans = transition(affinity(embeddings, 5.0, 4.0))[0]
    flat = scores[0].reshape(k, -1)
    squared = walk(flat, trans, log2_steps, squaring=True)
    repeated = walk(flat, trans, log2_steps, squaring=False)
    torch.testing.assert_close(squared, repeated, rtol=0, atol=1e-10)
    torch.testing.assert_close(walk(flat, trans, log2_steps), squared, rtol=0, atol=1e-10)
    assert (squared - flat).abs().max() > 0.01


@pytest.mark.parametrize("radius", [None, 7, 100])
def test_window_covering_the_map_equals_dense(radius: int | None) -> None:
    scores, embeddings = random_inputs(2, 3, 8, 6, 8, seed=2)
    valid = torch.ones(2, 6, 8, dtype=torch.bool)
    valid[0, 4:, 5:] = False
    dense = RandomWalk(gamma=4.0, beta=3.0, log2_steps=4)(scores, embeddings, valid)
    windowed = RandomWalk(gamma=4.0, beta=3.0, log2_steps=4, radius=radius)(scores, embeddings, valid)
    torch.testing.assert_close(windowed, dense, rtol=0, atol=1e-10)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_small_window_matches_masked_dense_affinities(radius: int) -> None:
    scores, embeddings = random_inputs(2, 2, 5, 4, 5, seed=3)
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[1, 0, 1:3] = False
    aff = window_affinity(embeddings, 4.0, 3.0, radius, valid)
    ry, rx = window_radii(radius, 4, 5)
    assert aff.shape == (2, len(window_offsets(ry, rx)), 4, 5)
    expected_aff = reference_affinity(embeddings, 4.0, 3.0, valid, radius)
    for o, (dy, dx) in enumerate(window_offsets(ry, rx)):
        for y in range(4):
            for x in range(5):
                if 0 <= y + dy < 4 and 0 <= x + dx < 5:
                    expected = expected_aff[:, y * 5 + x, (y + dy) * 5 + x + dx]
                else:
                    expected = torch.zeros(2, dtype=torch.float64)
                torch.testing.assert_close(aff[:, o, y, x], expected, rtol=1e-9, atol=1e-300)
    out = RandomWalk(gamma=4.0, beta=3.0, log2_steps=3, radius=radius)(scores, embeddings, valid)
    for n in range(2):
        power = torch.linalg.matrix_power(transition(expected_aff[n]), 8)
        torch.testing.assert_close(out[n], (scores[n].reshape(2, 20) @ power).reshape(2, 4, 5), rtol=0, atol=1e-10)
    if radius == 0:
        torch.testing.assert_close(out, scores)


@pytest.mark.parametrize("radius", [None, 3])
def test_score_stays_in_its_cluster(radius: int | None) -> None:
    g = torch.Generator().manual_seed(4)
    h, w, d = 12, 16, 8
    left = torch.arange(w) < 7
    centres = torch.eye(d, dtype=torch.float64)[:2]  # orthogonal: cosine 0 across the clusters
    embeddings = torch.where(left, centres[0][:, None, None], centres[1][:, None, None])[None]
    embeddings = embeddings + 0.1 * torch.randn(1, d, h, w, generator=g, dtype=torch.float64)
    scores = torch.zeros(1, 2, h, w, dtype=torch.float64)
    scores[0, 0, 5, 3] = 1.0  # inside the left cluster
    scores[0, 1, 8, 12] = 1.0  # inside the right cluster
    out = RandomWalk(radius=radius)(scores, embeddings)
    inside = left.expand(h, w)
    # Measured: ≤ 1e-24 across (exp(−100) per cross pair); ≥ 2e-3 everywhere on its own side, the peak 1 → ≤ 0.03.
    assert out[0, 0][~inside].max() < 1e-20 and out[0, 1][inside].max() < 1e-20
    assert out[0, 0][inside].min() > 1e-3 and out[0, 1][~inside].min() > 1e-3
    assert out[0, 0, 5, 3] < 0.1 and out[0, 1, 8, 12] < 0.1


@pytest.mark.parametrize("radius", [None, 2])
def test_invalid_pixels_neither_send_nor_receive(radius: int | None) -> None:
    scores, embeddings = random_inputs(2, 3, 6, 7, 9, seed=5)
    valid = torch.ones(2, 7, 9, dtype=torch.bool)
    valid[0, :, 6:] = False
    valid[1, 2, 2:5] = False
    rw = RandomWalk(gamma=3.0, beta=2.0, log2_steps=3, radius=radius)
    out = rw(scores, embeddings, valid)
    inside = valid[:, None].expand_as(scores)
    assert torch.equal(out[~inside], scores[~inside])
    assert (out[inside] - scores[inside]).abs().max() > 0.05
    g = torch.Generator().manual_seed(6)
    other_scores, other_embeddings = scores.clone(), embeddings.clone()
    other_scores.masked_scatter_(~inside, 5 * torch.rand(int((~inside).sum()), generator=g, dtype=torch.float64))
    embeddings_outside = ~valid[:, None].expand_as(embeddings)
    other_embeddings[embeddings_outside] = torch.randn(int(embeddings_outside.sum()), generator=g, dtype=torch.float64)
    other = rw(other_scores, other_embeddings, valid)
    torch.testing.assert_close(other[inside], out[inside], rtol=0, atol=1e-12)


@pytest.mark.parametrize("radius", [None, 2])
def test_probabilities_stay_probabilities_and_batch_is_independent(radius: int | None) -> None:
    scores, embeddings = random_inputs(3, 4, 8, 6, 7, seed=7)
    probs = (3 * scores).softmax(1).float()
    rw = RandomWalk(radius=radius)
    out = rw(probs, embeddings.float())
    assert out.dtype == torch.float32 and out.shape == probs.shape
    torch.testing.assert_close(out.sum(1), torch.ones(3, 6, 7))
    assert (out >= probs.amin((2, 3), keepdim=True) - 1e-6).all()
    assert (out <= probs.amax((2, 3), keepdim=True) + 1e-6).all()
    for i in range(3):
        torch.testing.assert_close(out[i : i + 1], rw(probs[i : i + 1], embeddings[i : i + 1].float()))


def tiny_nonzero(x: Tensor, bound: float) -> Tensor:
    return (x != 0) & (x.abs() < bound)


@pytest.mark.parametrize("radius", [None, 2])
def test_negligible_entries_are_dropped_without_changing_the_walk(radius: int | None) -> None:
    """Near-orthogonal float32 embeddings underflow exp(γβ(cos − 1)) into subnormals (many times slower to multiply on
    CPUs), as do near-zero scores: the affinities, transitions and output hold no nonzero entry below √tiny, so no
    product of two of them is subnormal, and the output equals the float64 walk's."""
    g = torch.Generator().manual_seed(3)
    embeddings = torch.randn(2, 64, 8, 8, generator=g)
    scores = torch.rand(2, 3, 8, 8, generator=g)
    scores[:, 0, :4] = 1e-40  # subnormal input scores
    unit = torch.nn.functional.normalize(embeddings.flatten(2), dim=1)
    raw = torch.bmm(unit.transpose(1, 2), unit).sub(1).mul(5.0 * 20.0).exp()
    assert tiny_nonzero(raw, torch.finfo(raw.dtype).tiny).sum() > 50  # the case this test is about does occur
    floor = negligible(torch.float32)
    assert floor**2 >= torch.finfo(torch.float32).tiny
    walker = RandomWalk(radius=radius)
    if radius is None:
        aff = affinity(embeddings)
        assert not tiny_nonzero(transition(aff), floor).any()
    else:
        aff = window_affinity(embeddings, 5.0, 20.0, radius)
    out = walker(scores, embeddings)
    assert not tiny_nonzero(aff, floor).any() and not tiny_nonzero(out, floor).any()
    expected = walker(scores.double(), embeddings.double())
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-7)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log2_steps"):
        RandomWalk(log2_steps=-1)
    with pytest.raises(ValueError, match="radius"):
        RandomWalk(radius=-1)
    with pytest.raises(ValueError, match="match"):
        RandomWalk()(torch.rand(1, 2, 4, 4), torch.rand(1, 8, 4, 5))
    with pytest.raises(ValueError, match="match"):
        RandomWalk()(torch.rand(1, 2, 4, 4), torch.rand(1, 8, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool))
