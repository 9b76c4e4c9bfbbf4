"""SPML's pixel-to-segment contrast against NumPy and loop references: k-means, segment splitting, the per-relation
positive / negative sets, the loss and its gradients, the memory bank."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.spml import (
    UNLABELLED,
    FeatureAffinity,
    ImageSimilarity,
    PixelSegmentContrastLoss,
    SegmentBatch,
    SegmentMemoryBank,
    SegmentSets,
    SemanticAnnotation,
    SemanticCooccurrence,
    grid_labels,
    segment_contrast,
    segment_means,
    spherical_kmeans,
    split_segments,
    with_location,
)


def numpy_kmeans(x: np.ndarray, labels: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """One image: M-step (normalised sums, empty cluster = 0), E-step (argmax cosine), ``iterations`` times."""
    for _ in range(iterations):
        centroids = np.zeros((k, x.shape[1]))
        for i, z in enumerate(labels):
            centroids[z] += x[i]
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids = np.where(norms > 0, centroids / np.maximum(norms, 1e-12), 0.0)
        labels = np.argmax(x @ centroids.T, axis=1)
    return labels


def test_grid_labels_partition_the_image_row_major() -> None:
    grid = grid_labels(4, 6, 2, 3)
    assert grid.tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]


def test_location_features_are_appended_and_renormalised() -> None:
    e = F.normalize(torch.randn(1, 3, 2, 3), dim=1)
    out = with_location(e)
    raw = torch.cat(
        [e, torch.tensor([[-0.5] * 3, [0.5] * 3])[None, None], torch.tensor([[-0.5, 0.0, 0.5]] * 2)[None, None]], 1
    )
    torch.testing.assert_close(out, F.normalize(raw, dim=1))


@pytest.mark.parametrize("iterations", [0, 1, 10])
def test_spherical_kmeans_matches_numpy_per_image(iterations: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(3, 40, 5, generator=g, dtype=torch.float64), dim=2)
    init = torch.randint(0, 6, (3, 40), generator=g)
    got = spherical_kmeans(x, init, 6, iterations)
    for b in range(3):
        assert got[b].tolist() == numpy_kmeans(x[b].numpy(), init[b].numpy(), 6, iterations).tolist()


def test_spherical_kmeans_clusters_the_valid_pixels_only() -> None:
    """Padding is assigned a cluster but never moves a centroid: the valid pixels' clusters are those of k-means on
    the valid pixels alone."""
    g = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(2, 40, 5, generator=g, dtype=torch.float64), dim=2)
    init = torch.randint(0, 4, (2, 40), generator=g)
    valid = torch.rand(2, 40, generator=g) > 0.4
    got = spherical_kmeans(x, init, 4, 5, valid)
    for b in range(2):
        keep = valid[b].numpy()
        want = numpy_kmeans(x[b].numpy()[keep], init[b].numpy()[keep], 4, 5)
        assert got[b][valid[b]].tolist() == want.tolist()
    assert got.tolist() != spherical_kmeans(x, init, 4, 5).tolist()


def test_split_segments_respects_every_partition_and_the_image() -> None:
    g = torch.Generator().manual_seed(1)
    clusters, labels, regions = (torch.randint(0, n, (2, 30), generator=g) for n in (3, 2, 4))
    valid = torch.rand(2, 30, generator=g) > 0.2
    segments = split_segments(clusters, labels, regions, valid=valid)
    assert (segments.index[~valid] == UNLABELLED).all()
    groups: dict[tuple, set] = {}
    for b in range(2):
        for i in range(30):
            if valid[b, i]:
                groups.setdefault((b, int(clusters[b, i]), int(labels[b, i]), int(regions[b, i])), set()).add(
                    int(segments.index[b, i])
                )
    assert all(len(ids) == 1 for ids in groups.values())  # same keys → same segment
    assert len({next(iter(ids)) for ids in groups.values()}) == len(groups) == segments.count  # and only then
    for (b, c, lab, reg), ids in groups.items():
        s = next(iter(ids))
        assert int(segments.batch[s]) == b and segments.keys[:, s].tolist() == [c, lab, reg]


@pytest.mark.parametrize("valid", [False, True])
def test_split_segments_numbers_segments_as_a_column_wise_unique(valid: bool) -> None:
    """Same ids and keys as ``torch.unique(dim=1)`` over the (image, partitions) columns, negative ids included."""
    g = torch.Generator().manual_seed(5)
    parts = [torch.randint(lo, hi, (3, 50), generator=g) for lo, hi in ((0, 4), (-1, 3), (-1, 70000))]
    mask = torch.rand(3, 50, generator=g) > 0.3 if valid else torch.ones(3, 50, dtype=torch.bool)
    segments = split_segments(*parts, valid=mask if valid else None)
    stacked = torch.stack([torch.arange(3)[:, None].expand(3, 50), *parts]).reshape(4, -1)[:, mask.reshape(-1)]
    columns, inverse = torch.unique(stacked, dim=1, return_inverse=True)
    assert segments.index[mask].tolist() == inverse.tolist() and (segments.index[~mask] == UNLABELLED).all()
    assert segments.batch.tolist() == columns[0].tolist() and segments.keys.tolist() == columns[1:].tolist()


def test_segment_means_are_normalised_sums() -> None:
    e = torch.randn(7, 3, dtype=torch.float64)
    index = torch.tensor([0, 1, 0, -1, 2, 1, 0])
    got = segment_means(e, index, 3)
    for s in range(3):
        torch.testing.assert_close(got[s], F.normalize(e[index == s].sum(0), dim=0))


def loop_contrast(e, own, protos, positive, negative, kappa):
    """Per pixel, with Python sets: C⁺ = positives except the own segment, or {own} if that is empty."""
    out = []
    for i in range(e.shape[0]):
        sims = [kappa * (e[i] @ protos[s]) for s in range(protos.shape[0])]
        pos = [s for s in range(len(sims)) if positive[i, s] and s != own[i]] or [int(own[i])]
        neg = [s for s in range(len(sims)) if negative[i, s] and s != own[i] and s not in pos]
        num = sum(torch.exp(sims[s]) for s in pos)
        den = num + sum((torch.exp(sims[s]) for s in neg), torch.zeros((), dtype=e.dtype))
        out.append(-torch.log(num / den))
    return torch.stack(out)


def _contrast_case(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SegmentSets]:
    """9 pixels, 7 segments in 4 groups from random tables; kind 0 has only its own segment as a positive (the
    fallback), and group 3 is in no pixel's sets (left out, except where it is a pixel's own segment)."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(9, 4, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    own = torch.randint(0, 7, (9,), generator=g)
    group, kind = torch.tensor([0, 1, 2, 3, 0, 1, 3]), torch.randint(0, 4, (9,), generator=g)
    pos_table = torch.rand(4, 4, generator=g) > 0.5
    pos_table[0] = False
    neg_table = torch.rand(4, 4, generator=g) > 0.3
    pos_table[:, 3] = neg_table[:, 3] = False
    kind[0], own[1] = 0, 3
    return e, own, protos, SegmentSets(group, kind, pos_table, neg_table)


@pytest.mark.parametrize("bank", [0, 3], ids=["no memory", "memory"])
@pytest.mark.parametrize("chunk", [4, 1024])
def test_segment_contrast_matches_the_loop_values_and_gradients(chunk: int, bank: int) -> None:
    """Per pixel and summed, in chunks, with the last ``bank`` segments as a memory bank (no gradient)."""
    e, own, protos, sets = _contrast_case()
    e1, p1 = e.clone().requires_grad_(), protos.clone().requires_grad_()
    split = protos.shape[0] - bank
    got = segment_contrast(e1, own, p1[:split], sets, 6.0, memory=p1[split:] if bank else None, chunk=chunk)
    e2, p2 = e.clone().requires_grad_(), protos.clone().requires_grad_()
    positive = sets.positive[sets.kind][:, sets.group]
    negative = sets.negative[sets.kind][:, sets.group]
    want = loop_contrast(e2, own, p2, positive, negative, 6.0)
    torch.testing.assert_close(got, want.sum())
    got.backward()
    want.sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad)
    torch.testing.assert_close(p1.grad[:split], p2.grad[:split])
    assert (p1.grad[split:] == 0).all()  # the memory bank's segments get no gradient
    with torch.no_grad():
        for i in range(e.shape[0]):  # each pixel's own loss: one row at a time
            one = SegmentSets(sets.group, sets.kind[i : i + 1], sets.positive, sets.negative)
            torch.testing.assert_close(segment_contrast(e[i : i + 1], own[i : i + 1], protos, one, 6.0), want[i])
    assert want[0] >= 0 and math.isfinite(float(want[0].detach()))


def test_segment_contrast_stays_finite_when_the_other_positives_are_far_in_float32() -> None:
    """The own segment (weight 1) shares its group with the only other positive, at the far side of the sphere
    (weight e^{−2κ}, below float32's resolution at 1): the loss and its gradients match the float64 loop, not inf."""
    e = torch.tensor([[1.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # own, the other positive, a negative
    sets = SegmentSets(torch.tensor([0, 0, 1]), torch.tensor([0]), torch.tensor([[True, False]]),
                       torch.tensor([[False, True]]))  # fmt: skip
    e1, p1 = e.clone().requires_grad_(), protos.clone().requires_grad_()
    got = segment_contrast(e1, torch.tensor([0]), p1, sets, 16.0)
    e2, p2 = e.double().requires_grad_(), protos.double().requires_grad_()
    want = loop_contrast(e2, torch.tensor([0]), p2, torch.tensor([[True, True, False]]),
                         torch.tensor([[False, False, True]]), 16.0).sum()  # fmt: skip
    assert math.isfinite(got.item()) and want.item() > 15  # −log(e^{−32} / (e^{−32} + e^{−16}))
    torch.testing.assert_close(got.double(), want.detach())
    got.backward()
    want.backward()
    torch.testing.assert_close(e1.grad.double(), e2.grad)
    torch.testing.assert_close(p1.grad.double(), p2.grad)


def test_segment_contrast_gradient_follows_any_upstream_scale() -> None:
    """The gradient is computed in the forward pass; the backward pass scales it by the upstream gradient."""
    e, own, protos, sets = _contrast_case(4)
    e1 = e.clone().requires_grad_()
    (-2.5 * segment_contrast(e1, own, protos, sets, 8.0)).backward()
    e2 = e.clone().requires_grad_()
    (-2.5 * loop_contrast(e2, own, protos, sets.positive[sets.kind][:, sets.group],
                          sets.negative[sets.kind][:, sets.group], 8.0).sum()).backward()  # fmt: skip
    torch.testing.assert_close(e1.grad, e2.grad)
    none = SegmentSets(sets.group, sets.kind[:0], sets.positive, sets.negative)
    assert segment_contrast(e1[:0], own[:0], protos, none, 8.0) == 0  # no pixels


# ---------------------------------------------------------------------------------------------------------------------
# The loss on a hand-built batch, against sets written out per relation
# ---------------------------------------------------------------------------------------------------------------------


def _batch(seed: int = 3):
    """2 images, 4×4, 3-d embeddings; labels: class 1 and 2 in image 0, class 2 and unlabelled in image 1."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.full((2, 4, 4), UNLABELLED)
    labels[0, :2], labels[0, 2:] = 1, 2
    labels[1, :, :2] = 2
    regions = torch.zeros(2, 4, 4, dtype=torch.long)
    regions[:, :, 2:] = 1
    regions[1, 3] = 2
    tags = torch.tensor([[0, 1, 1], [0, 0, 1]])  # foreground tags by class id (class 0 never a tag here)
    return e, labels, regions, tags


def loop_loss(e, labels, regions, tags, relations, bank=()):
    """Segments = (image, label, region) with one k-means cluster per image (grid 1×1); relations spelled out."""
    b, _, h, w = e.shape
    keys, members = [], {}
    for n in range(b):
        for y in range(h):
            for x in range(w):
                key = (n, int(labels[n, y, x]), int(regions[n, y, x]))
                members.setdefault(key, []).append((y, x))
    keys = sorted(members)
    protos = torch.stack([F.normalize(sum(e[k[0], :, y, x] for y, x in members[k]), dim=0) for k in keys])
    located = with_location(e)
    loc_protos = torch.stack([F.normalize(sum(located[k[0], :, y, x] for y, x in members[k]), dim=0) for k in keys])
    seg_label = [k[1] for k in keys]
    seg_tags = [set(tags[k[0]].nonzero()[:, 0].tolist()) for k in keys]
    seg_image = [k[0] for k in keys]
    all_protos = torch.cat([protos, *[m[0] for m in bank]]) if bank else protos
    all_labels = seg_label + [int(v) for m in bank for v in m[1]]
    all_tags = seg_tags + [set(m[2][int(i)].nonzero()[:, 0].tolist()) for m in bank for i in m[3]]
    all_image = seg_image + [-1] * (len(all_labels) - len(seg_label))

    def term(rel, px_rows):
        kappa, values = relations[rel].concentration, []
        for n, y, x, own in px_rows:
            if rel == "similarity":
                feats, P = located[n, :, y, x], loc_protos
                pos = {s for s in range(len(keys)) if seg_image[s] == n and keys[s][2] == int(regions[n, y, x])}
                neg = {s for s in range(len(keys)) if seg_image[s] == n} - pos
            elif rel == "cooccurrence":
                feats, P = e[n, :, y, x], all_protos
                mine = set(tags[n].nonzero()[:, 0].tolist())
                pos = {s for s in range(len(all_labels)) if (mine & all_tags[s]) or all_image[s] == n}
                neg = set(range(len(all_labels))) - pos
            else:
                feats, P = e[n, :, y, x], all_protos
                lab = int(labels[n, y, x])
                pos = {s for s in range(len(all_labels)) if all_labels[s] == lab}
                neg = {s for s in range(len(all_labels)) if all_labels[s] >= 0} - pos
            positive = torch.zeros(1, P.shape[0], dtype=torch.bool)
            negative = torch.zeros(1, P.shape[0], dtype=torch.bool)
            positive[0, list(pos)] = True
            negative[0, list(neg)] = True
            values.append(loop_contrast(feats[None], torch.tensor([own]), P, positive, negative, kappa)[0])
        return torch.stack(values).mean()

    pixels = [(n, y, x, keys.index((n, int(labels[n, y, x]), int(regions[n, y, x])))) for n in range(b)
              for y in range(h) for x in range(w)]  # fmt: skip
    labelled = [p for p in pixels if int(labels[p[0], p[1], p[2]]) >= 0]
    out = {"similarity": term("similarity", pixels), "cooccurrence": term("cooccurrence", pixels)}
    out["annotation"] = term("annotation", labelled)
    return out, (protos.detach(), torch.tensor(seg_label), tags.bool(), torch.tensor(seg_image))


@pytest.mark.parametrize(
    "tags",
    [[[0, 1, 1], [0, 0, 1]], [[0, 1, 0], [0, 0, 1]], [[0, 1, 1], [0, 0, 0]]],
    ids=["shared tag", "disjoint tags", "untagged image"],
)
def test_relations_match_their_sets_written_out(tags: list) -> None:
    e, labels, regions, _ = _batch()
    tags = torch.tensor(tags)
    relations = {"similarity": ImageSimilarity(0.1, 16.0), "annotation": SemanticAnnotation(1.0, 6.0),
                 "cooccurrence": SemanticCooccurrence(0.5, 8.0)}  # fmt: skip
    loss_fn = PixelSegmentContrastLoss(**relations, grid=(1, 1), iterations=2)
    e1 = e.clone().requires_grad_()
    total, terms = loss_fn(e1, labels, regions, tags)
    e2 = e.clone().requires_grad_()
    want, memory = loop_loss(e2, labels, regions, tags, relations)
    for name in ("similarity", "annotation", "cooccurrence"):
        torch.testing.assert_close(terms[name], want[name].detach(), msg=name)
    want_total = sum(relations[k].weight * v for k, v in want.items())
    torch.testing.assert_close(total, want_total)
    total.backward()
    want_total.backward()
    torch.testing.assert_close(e1.grad, e2.grad)

    # Second batch: the first one's segments are in the memory bank (annotation and co-occurrence sets).
    e_next = F.normalize(e.flip(-1) + 0.3, dim=1)
    swapped = labels.flip(0), regions.flip(0), tags.flip(0)  # another batch: images in the other order
    _, terms = loss_fn(e_next, *swapped)
    want, _ = loop_loss(e_next, *swapped, relations, bank=[memory])
    for name in ("similarity", "annotation", "cooccurrence"):
        torch.testing.assert_close(terms[name], want[name], msg=f"{name} with memory")


def test_image_similarity_is_averaged_per_image() -> None:
    """An image with fewer real pixels weighs as much as the other: the batch's term is the mean of each image's."""
    e, labels, regions, tags = _batch()
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, :, 1:] = False  # image 1: 4 real pixels, image 0: 16

    def similarity(*args) -> torch.Tensor:
        off = SemanticAnnotation(0, 1), SemanticCooccurrence(0, 1)
        loss_fn = PixelSegmentContrastLoss(ImageSimilarity(1.0, 16.0), *off, grid=(1, 1), iterations=2)
        return loss_fn(*args)[1]["similarity"]

    alone = [similarity(e[i : i + 1], labels[i : i + 1], regions[i : i + 1], tags[i : i + 1], valid[i : i + 1])
             for i in range(2)]  # fmt: skip
    torch.testing.assert_close(similarity(e, labels, regions, tags, valid), (alone[0] + alone[1]) / 2)


def test_memory_bank_keeps_the_last_iterations_detached() -> None:
    e, labels, regions, tags = _batch()
    loss_fn = PixelSegmentContrastLoss(grid=(2, 2), memory=2)
    for _ in range(3):
        loss_fn(e.clone().requires_grad_(), labels, regions, tags)
    entries = loss_fn.bank.entries
    assert len(entries) == 2 and not any(m.prototypes.requires_grad for m in entries)


def test_memory_bank_travels_in_the_state_dict() -> None:
    """Saved, read back with ``weights_only=True`` and loaded into a fresh loss, the bank gives the next batch the
    same loss, terms and gradient as the loss that filled it."""
    e, labels, regions, tags = _batch()

    def build() -> PixelSegmentContrastLoss:
        return PixelSegmentContrastLoss(affinity=FeatureAffinity(0.5, 6.0), grid=(2, 2), memory=2)

    loss_fn = build()
    for step in range(3):
        loss_fn(F.normalize(e + 0.2 * step, dim=1), labels, regions, tags)
    saved = io.BytesIO()
    torch.save(loss_fn.state_dict(), saved)
    saved.seek(0)
    fresh = build()
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    assert len(fresh.bank.entries) == 2
    e_next = F.normalize(e.flip(-1) + 0.3, dim=1)
    batch = labels.flip(0), regions.flip(0), tags.flip(0)
    e1, e2 = e_next.clone().requires_grad_(), e_next.clone().requires_grad_()
    (want, want_terms), (got, got_terms) = loss_fn(e1, *batch), fresh(e2, *batch)
    assert torch.equal(got, want) and all(torch.equal(got_terms[k], v) for k, v in want_terms.items())
    want.backward()
    got.backward()
    assert torch.equal(e2.grad, e1.grad)
    assert not torch.equal(build()(e_next, *batch)[0], want)  # an empty bank gives another loss


def test_terms_are_returned_and_nothing_is_left_on_the_module() -> None:
    e, labels, regions, tags = _batch()
    loss_fn = PixelSegmentContrastLoss(grid=(2, 2))
    attributes = dict(vars(loss_fn))
    total, terms = loss_fn(e.clone().requires_grad_(), labels, regions, tags)
    assert vars(loss_fn).keys() == attributes.keys() and all(vars(loss_fn)[k] is v for k, v in attributes.items())
    assert set(terms) == set(loss_fn.relations) and not any(t.requires_grad for t in terms.values())
    assert total.requires_grad
    torch.testing.assert_close(total.detach(), sum(r.weight * terms[k] for k, r in loss_fn.relations.items()))


def test_feature_affinity_labels_unlabelled_segments_by_their_nearest_labelled_one() -> None:
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 0.8]])
    labels = torch.tensor([3, 5, UNLABELLED, UNLABELLED])
    assert FeatureAffinity.propagate(F.normalize(prototypes, dim=1), labels).tolist() == [3, 5, 3, 5]


def test_affinity_term_runs_and_contrasts_every_pixel_of_a_labelled_segment() -> None:
    e, labels, regions, tags = _batch()
    off = ImageSimilarity(0, 1), SemanticAnnotation(0, 1), SemanticCooccurrence(0, 1)
    loss_fn = PixelSegmentContrastLoss(*off, FeatureAffinity(1.0, 6.0), grid=(1, 1))
    value, terms = loss_fn(e.clone().requires_grad_(), labels, regions, tags)
    assert value > 0 and terms["annotation"] == 0


def test_padding_is_in_no_segment() -> None:
    e, labels, regions, tags = _batch()
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, :, 3] = False
    loss_fn = PixelSegmentContrastLoss(grid=(1, 1))
    segments = loss_fn.segment(e, labels, regions, valid)
    assert (segments.index.reshape(2, 4, 4)[:, :, 3] == UNLABELLED).all()
    assert torch.isfinite(loss_fn(e, labels, regions, tags, valid)[0])


def test_pixel_sampling_counts_that_many_pixels_per_image() -> None:
    e, labels, regions, tags = _batch()
    every, _ = PixelSegmentContrastLoss(grid=(1, 1))(e, labels, regions, tags)
    all_of_them, _ = PixelSegmentContrastLoss(grid=(1, 1), pixels_per_image=16)(e, labels, regions, tags)
    torch.testing.assert_close(all_of_them, every)  # 16 = every pixel of a 4×4 image
    loss_fn = PixelSegmentContrastLoss(grid=(1, 1), pixels_per_image=3)
    chosen = loss_fn._sample(torch.tensor([0] * 10 + [1] * 2), 2)
    assert chosen.tolist()[-2:] == [10, 11] and len(chosen) == 5 and (chosen[:3] < 10).all()
    assert torch.isfinite(loss_fn(e, labels, regions, tags)[0])
    with pytest.raises(ValueError, match="pixels_per_image"):
        PixelSegmentContrastLoss(pixels_per_image=0)


def test_a_restored_bank_joins_the_batch_on_its_device() -> None:
    """Checkpoints load on the CPU: the bank's segments follow the batch to wherever it is (here the meta device)."""
    bank = SegmentMemoryBank(2)
    cpu = SegmentBatch(torch.rand(3, 4), torch.tensor([0, 1, -1]), torch.ones(1, 2, dtype=torch.bool), torch.zeros(3))
    bank.set_extra_state([cpu._asdict()])
    batch = SegmentBatch(*(part.to("meta") for part in cpu))
    recalled = bank.recall(batch)
    assert all(part.device.type == "meta" for part in recalled) and recalled.prototypes.shape == (3, 4)
