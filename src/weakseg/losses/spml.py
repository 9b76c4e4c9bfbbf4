"""Pixel-to-segment contrast (Ke, Hwang et al., SPML, papers/spml-pixel-to-segment-contrast.txt; METHODS.md §4).

* :func:`grid_labels`, :func:`with_location`, :func:`spherical_kmeans` — per-image spherical k-means of the
  embeddings (with their (y, x) location), initialised on a regular grid, batched.
* :func:`split_segments` — segments that straddle no two weak-label classes and no two over-segmentation regions.
* :func:`segment_means` — a segment's feature: the L2-normalised mean of its pixels' embeddings.
* :func:`segment_contrast` — ``−log Σ_{C⁺} exp(κ e·μ) / Σ_{C⁺ ∪ C⁻} exp(κ e·μ)`` summed over pixels, the pixel's own
  segment left out of ``C⁺`` unless it is the only positive (SegSort+, paper eq. 3), with its gradient in one pass.
* :class:`ImageSimilarity`, :class:`SemanticAnnotation`, :class:`SemanticCooccurrence`, :class:`FeatureAffinity` —
  the four relations of SPML (:class:`Relation`: a weight and a concentration, and its positive and negative sets).
* :class:`SegmentMemoryBank` — the last iterations' segments, a module whose ``state_dict()`` holds them.
* :class:`PixelSegmentContrastLoss` — the relations weighted and summed (eq. 4), returned with each relation's term.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from weakseg.distributed import gather_rows
from weakseg.utils import compute_dtype

UNLABELLED = -1


def grid_labels(height: int, width: int, rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """``height×width`` cluster ids of a ``rows×cols`` regular grid (k-means initialisation), row-major."""
    ys = torch.linspace(0, rows - 1, height, device=device).round().long()
    xs = torch.linspace(0, cols - 1, width, device=device).round().long()
    return ys[:, None] * cols + xs[None]


def with_location(embeddings: torch.Tensor) -> torch.Tensor:
    """``B×D×h×w`` embeddings with their (y, x) location in ``[−0.5, 0.5]`` appended, re-normalised (B×(D+2)×h×w)."""
    b, _, h, w = embeddings.shape
    ys = torch.linspace(-0.5, 0.5, h, device=embeddings.device, dtype=embeddings.dtype)
    xs = torch.linspace(-0.5, 0.5, w, device=embeddings.device, dtype=embeddings.dtype)
    location = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None].expand(b, -1, -1, -1)
    return F.normalize(torch.cat([embeddings, location], 1), dim=1)


def spherical_kmeans(
    features: torch.Tensor, labels: torch.Tensor, clusters: int, iterations: int = 10, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Spherical k-means of each image's pixels, all images at once, without gradient.

    ``features`` ``B×N×D`` (unit rows), ``labels`` ``B×N`` initial cluster ids in ``[0, clusters)``. Each iteration
    is an M-step ``μ_s = normalise(Σ_{i∈s} e_i)`` then an E-step ``z_i = argmax_s e_iᵀ μ_s`` (METHODS.md §4); an
    empty cluster's centroid is 0. Pixels outside ``valid`` (``B×N``; padding) are assigned but never move a
    centroid, as the reference clusters the real pixels only. Returns the ``B×N`` cluster ids.
    """
    with torch.no_grad():
        features = features.detach()
        b, _, d = features.shape
        members = features if valid is None else features * valid[..., None].to(features.dtype)
        for _ in range(iterations):
            sums = features.new_zeros(b, clusters, d).scatter_add_(1, labels[..., None].expand(-1, -1, d), members)
            labels = torch.bmm(features, F.normalize(sums, dim=2).transpose(1, 2)).argmax(2)
    return labels


@dataclass
class Segments:
    """Segments of a batch: pixel → segment id (``UNLABELLED`` outside the valid pixels) and per-segment keys."""

    index: torch.Tensor  # B×N long, in [0, S) or −1
    batch: torch.Tensor  # S: the image of each segment
    keys: torch.Tensor  # K×S: the values of the partitions each segment was split by (cluster, label, region, …)

    @property
    def count(self) -> int:
        return self.batch.shape[0]


def split_segments(*partitions: torch.Tensor, valid: torch.Tensor | None = None) -> Segments:
    """The common refinement of ``B×N`` partitions (k-means clusters, weak labels, over-segmentation regions): a
    segment is a maximal set of valid pixels of one image that agree on every partition. Segments are numbered in
    the lexicographic order of their (image, partition values), as ``torch.unique(dim=1)`` would number them."""
    first = partitions[0]
    b, n = first.shape
    batch = torch.arange(b, device=first.device)[:, None].expand(b, n)
    stacked = torch.stack([batch, *partitions]).reshape(len(partitions) + 1, -1)
    index = torch.full((b * n,), UNLABELLED, dtype=torch.long, device=first.device)
    keep = torch.ones(b * n, dtype=torch.bool, device=first.device) if valid is None else valid.reshape(-1).bool()
    kept = stacked[:, keep]
    # One 1-D unique per partition instead of a column-wise one: ``rank`` numbers the distinct prefixes of the
    # columns in lexicographic order, and each partition refines it (values ranked first, so that nothing overflows).
    rank = torch.zeros(kept.shape[1], dtype=torch.long, device=first.device)
    for row in kept:
        values, row_rank = torch.unique(row, return_inverse=True)
        rank = torch.unique(rank * values.shape[0] + row_rank, return_inverse=True)[1]
    count = int(rank.max()) + 1 if rank.numel() else 0
    member = rank.new_empty(count).scatter_(0, rank, torch.arange(rank.shape[0], device=first.device))
    columns = kept[:, member]  # each segment's keys, read off one of its pixels
    index[keep] = rank
    return Segments(index.reshape(b, n), columns[0], columns[1:])


def segment_means(embeddings: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """``count×D`` L2-normalised sums of the ``N×D`` embeddings of each segment (``index`` ``N``, −1 left out)."""
    keep = index >= 0
    sums = embeddings.new_zeros(count, embeddings.shape[1])
    return F.normalize(sums.index_add(0, index[keep], embeddings[keep]), dim=1)


@dataclass
class SegmentSets:
    """Positive and negative segment sets of a relation, by group: segment ``s`` is in group ``group[s]``, pixel ``i``
    is of kind ``kind[i]``; ``s`` is positive (negative) to ``i`` when ``positive[kind[i], group[s]]``
    (``negative[…]``). Every relation of SPML is of this form (a label, an image, a region decides), which lets the
    contrast sum ``exp(κ e·μ)`` by group with one matrix product instead of masking ``N×S`` pairs."""

    group: torch.Tensor  # S long
    kind: torch.Tensor  # N long
    positive: torch.Tensor  # kinds × groups bool
    negative: torch.Tensor  # kinds × groups bool


def segment_contrast(
    embeddings: torch.Tensor,
    own: torch.Tensor,
    prototypes: torch.Tensor,
    sets: SegmentSets,
    concentration: float,
    memory: torch.Tensor | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """``Σ_i −log(Σ_{s∈C⁺} exp(κ e_iᵀμ_s) / Σ_{s∈C⁺∪C⁻} exp(κ e_iᵀμ_s))`` over the pixels (SPML eq. 3, SegSort+).

    ``embeddings`` ``N×D`` and ``prototypes`` ``S×D`` of unit length, ``own`` ``N`` the pixel's own segment. ``C⁺`` is
    the positives other than the own segment, or the own segment alone when there is no other positive; the own
    segment is never a negative. ``memory`` (``M×D``, unit rows, no gradient: the memory bank) are more segments,
    numbered ``S…S+M−1`` in ``sets.group``. Segments in no set of any pixel are left out, as they change nothing.
    Returns the sum of the pixels' losses (a scalar). Pixels are taken ``chunk`` at a time, and under autograd the
    gradient is computed chunk by chunk in the same pass (:class:`_GroupedContrast`): memory stays O(chunk·S).
    """
    dtype = compute_dtype(embeddings)
    count = prototypes.shape[0]
    fixed = prototypes.new_zeros(0, prototypes.shape[1]) if memory is None else memory.detach()
    group = sets.group
    used = (sets.positive | sets.negative).any(0)[group]
    used[own] = True
    if not bool(used.all()):
        columns = used.nonzero()[:, 0]
        kept = int(used[:count].sum())  # columns are sorted: the prototypes' come first
        own, group = (used.cumsum(0) - 1)[own], group[columns]
        prototypes, fixed = prototypes[columns[:kept]], fixed[columns[kept:] - count]
    args = (embeddings.to(dtype), prototypes.to(dtype), fixed.to(dtype), own,
            SegmentSets(group, sets.kind, sets.positive, sets.negative), concentration, chunk)  # fmt: skip
    if torch.is_grad_enabled() and (embeddings.requires_grad or prototypes.requires_grad):
        return _GroupedContrast.apply(*args)
    return _contrast_sum(*args, grad_e=False, grad_p=False)[0]


class _GroupedContrast(torch.autograd.Function):
    """:func:`_contrast_sum` with its gradient, computed in the forward pass (the output is a scalar, so the
    backward pass only scales it): the ``N×S`` weights are formed once and never stored."""

    @staticmethod
    def forward(
        ctx,
        embeddings: torch.Tensor,
        prototypes: torch.Tensor,
        fixed: torch.Tensor,
        own: torch.Tensor,
        sets: SegmentSets,
        kappa: float,
        chunk: int,
    ) -> torch.Tensor:
        grad_e, grad_p = ctx.needs_input_grad[:2]
        total, d_e, d_p = _contrast_sum(embeddings, prototypes, fixed, own, sets, kappa, chunk, grad_e, grad_p)
        ctx.save_for_backward(d_e, d_p)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        d_e, d_p = ctx.saved_tensors
        return None if d_e is None else grad * d_e, None if d_p is None else grad * d_p, None, None, None, None, None


def _contrast_sum(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    fixed: torch.Tensor,
    own: torch.Tensor,
    sets: SegmentSets,
    kappa: float,
    chunk: int,
    grad_e: bool,
    grad_p: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The contrast sum of :func:`segment_contrast` and, if asked, its gradients with respect to the embeddings and
    the prototypes (not ``fixed``), without autograd.

    Per pixel ``i`` with ``w_s = exp(κ(e_iᵀμ_s − 1))``, numerator ``P`` and negatives' sum ``R``:
    ``L = log(P + R) − log P``, so ``∂L/∂w_s = [s counts in P or R]/(P + R) − [s counts in P]/P`` and
    ``∂L/∂e_i = κ Σ_s w_s ∂L/∂w_s μ_s``, ``∂L/∂μ_s = κ Σ_i w_s ∂L/∂w_s e_i``. ``∂L/∂w_s`` depends on ``s`` only
    through its group, except for the own segment. So the segments are sorted by group (the prototypes' first), and
    the weights are held segments × pixels: a group's weights are a block of rows, scaled in place.
    """
    n, groups = embeddings.shape[0], sets.positive.shape[1]
    key = sets.group + groups * (torch.arange(sets.group.shape[0], device=own.device) >= prototypes.shape[0])
    order = torch.sort(key, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=order.device)
    every, group, own = torch.cat([prototypes, fixed])[order], sets.group[order], rank[own]
    _, lengths = torch.unique_consecutive(key[order], return_counts=True)
    ends = lengths.cumsum(0)
    blocks = list(zip(group[ends - 1].tolist(), (ends - lengths).tolist(), ends.tolist(), strict=True))
    sizes = torch.bincount(group, minlength=groups).to(every.dtype)[:, None]  # G×1
    total = every.new_zeros(())
    d_e = torch.empty_like(embeddings) if grad_e else None
    d_p = torch.zeros_like(prototypes) if grad_p else None
    buffer = every.new_empty(every.shape[0] * min(chunk, n))
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        e, own_c, kind = embeddings[rows], own[rows], sets.kind[rows]
        cols = torch.arange(e.shape[0], device=e.device)
        # Unit vectors: κ e·μ ∈ [−κ, κ], so exp(κ(e·μ − 1)) ∈ [e^{−2κ}, 1] needs no max-shift.
        weights = buffer[: every.shape[0] * e.shape[0]].view(every.shape[0], e.shape[0])  # S×n
        torch.addmm(every.new_full((), -kappa), every, e.T, alpha=kappa, out=weights).exp_()
        # The own segment is summed apart: subtracting its weight (near 1) from its group's sum would cancel the
        # other members' (down to e^{−2κ}) to 0 in float32, and the loss to inf.
        own_weight = weights[own_c, cols].clone()
        weights[own_c, cols] = 0.0
        by_group = weights.new_zeros(groups, e.shape[0]).index_add_(0, group, weights)  # G×n, own segment left out
        pos = sets.positive[kind].T  # G×n
        neg = sets.negative[kind].T & ~pos
        own_positive = pos[group[own_c], cols].to(weights.dtype)
        others = (pos * sizes).sum(0) - own_positive  # positives besides the own segment
        numerator = torch.where(others > 0, (by_group * pos).sum(0), own_weight)
        denominator = numerator + (by_group * neg).sum(0)
        total += (torch.log(denominator) - torch.log(numerator)).sum()
        if not (grad_e or grad_p):
            continue
        counted = pos & (others > 0)  # groups whose segments (but the own one) are in the numerator
        factor = (counted | neg) / denominator - counted / numerator  # G×n: ∂L/∂w_s of the group's segments
        for g, first, last in blocks:  # weights become w_s ∂L/∂w_s
            weights[first:last].mul_(factor[g])
        weights[own_c, cols] = torch.where(others > 0, 0.0, 1 / denominator - 1 / numerator) * own_weight
        if grad_e:
            torch.mm(weights.T, every, out=d_e[rows]).mul_(kappa)
        if grad_p:
            d_p.addmm_(weights[: prototypes.shape[0]], e, alpha=kappa)
    if d_p is not None:
        d_p = d_p[rank[: prototypes.shape[0]]]  # back to the prototypes' order
    return total, d_e, d_p


class SegmentBatch(NamedTuple):
    """The segments of one (global) batch: features ``S×D``, labels ``S`` (``UNLABELLED`` = −1), the classes of its
    images ``I×C`` (bool) and the image of each segment ``S`` (in ``0…I−1``)."""

    prototypes: torch.Tensor
    labels: torch.Tensor
    tags: torch.Tensor
    images: torch.Tensor


class SegmentMemoryBank(nn.Module):
    """SPML's memory bank: the segments of the last ``iterations`` batches, detached.

    A module, so that its owner's ``state_dict()`` carries it: the entries, whose sizes vary from batch to batch (no
    fixed-shape buffer holds them), are its extra state, a list of dicts of tensors that
    ``torch.load(weights_only=True)`` reads back.
    """

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.entries: deque[SegmentBatch] = deque(maxlen=iterations)

    def recall(self, batch: SegmentBatch) -> SegmentBatch:
        """The bank's segments as one batch that follows ``batch``: on its device (a bank restored from a checkpoint
        is on the CPU), features in its dtype, without gradient, and images numbered on from its images."""
        device, offset = batch.prototypes.device, batch.tags.shape[0]
        entries = [SegmentBatch(*(part.to(device) for part in entry)) for entry in self.entries]
        images = []
        for entry in entries:
            images.append(entry.images + offset)
            offset += entry.tags.shape[0]
        dtype = batch.prototypes.dtype
        return SegmentBatch(
            torch.cat([batch.prototypes[:0].detach(), *(entry.prototypes.to(dtype) for entry in entries)]),
            torch.cat([batch.labels[:0], *(entry.labels for entry in entries)]),
            torch.cat([batch.tags[:0], *(entry.tags for entry in entries)]),
            torch.cat([batch.images[:0], *images]),
        )

    def append(self, batch: SegmentBatch) -> None:
        """Keep ``batch``'s segments, detached; the oldest iteration's go when the bank is full."""
        self.entries.append(batch._replace(prototypes=batch.prototypes.detach()))

    def get_extra_state(self) -> list[dict[str, torch.Tensor]]:
        """The entries, oldest first, as dicts of tensors (what ``state_dict()`` holds)."""
        return [entry._asdict() for entry in self.entries]

    def set_extra_state(self, state: list[dict[str, torch.Tensor]]) -> None:
        """Restore what :meth:`get_extra_state` returned."""
        self.entries.clear()
        self.entries.extend(SegmentBatch(**entry) for entry in state)


@dataclass
class RelationInputs:
    """What SPML's relations read, built once per batch by :meth:`PixelSegmentContrastLoss.forward`: the pixels whose
    loss counts, this process's segments, and the global batch's segments followed by the memory bank's."""

    pixels: torch.Tensor  # N×D: the embeddings of the pixels whose loss counts
    located: torch.Tensor  # N×(D+2): the same with their location (image similarity)
    own: torch.Tensor  # N: each pixel's segment among this process's
    own_global: torch.Tensor  # N: each pixel's segment among the global batch's
    pixel_image: torch.Tensor  # N: each pixel's image in this process's batch
    pixel_labels: torch.Tensor  # N: each pixel's label (UNLABELLED = −1)
    segments: Segments  # this process's segments
    located_prototypes: torch.Tensor  # S×(D+2): their features with location
    tags: torch.Tensor  # B×C: the classes of this process's images
    first_image: int  # this process's first image among the global batch's
    batch: SegmentBatch  # the global batch's segments (every process's, features with gradient)
    memory: SegmentBatch  # the memory bank's, images numbered on from the batch's

    @property
    def images(self) -> int:
        """This process's images."""
        return self.tags.shape[0]

    @cached_property
    def labels(self) -> torch.Tensor:
        """The label of every segment: the batch's, then the bank's."""
        return torch.cat([self.batch.labels, self.memory.labels])

    @cached_property
    def image_tags(self) -> torch.Tensor:
        """The classes of every image: the batch's, then the bank's."""
        return torch.cat([self.batch.tags, self.memory.tags])

    @cached_property
    def segment_image(self) -> torch.Tensor:
        """The image of every segment: the batch's, then the bank's."""
        return torch.cat([self.batch.images, self.memory.images])


@dataclass(frozen=True)
class Relation(ABC):
    """One of SPML's pixel-to-segment relations: its weight ``λ`` in the total (eq. 4) and the concentration ``κ``
    of its contrast (eq. 3)."""

    weight: float
    concentration: float

    @abstractmethod
    def summed_loss(self, inputs: RelationInputs) -> tuple[torch.Tensor, int]:
        """``Σ_i L(i)`` (eq. 3) over the pixels the relation contrasts, and how many pixels that is."""


class ImageSimilarity(Relation):
    """Low-level image similarity, image by image on the location-augmented embeddings: ``C⁺`` the segments of the
    pixel's over-segmentation region, ``C⁻`` the other segments of its image. Averaged over each image's pixels, then
    over the images (as the reference: images with more real pixels do not weigh more)."""

    def summed_loss(self, inputs: RelationInputs) -> tuple[torch.Tensor, int]:
        """The sum over images of their mean pixel loss, and the number of images with pixels."""
        counts = torch.bincount(inputs.pixel_image, minlength=inputs.images).tolist()
        means = [self._image_loss(inputs, image) / count for image, count in enumerate(counts) if count]
        return sum(means), len(means)

    def _image_loss(self, inputs: RelationInputs, image: int) -> torch.Tensor:
        """One image's pixels' sum: groups are its regions, a pixel's kind is its own region."""
        segments, pixel_in = inputs.segments, inputs.pixel_image == image
        index = (segments.batch == image).nonzero()[:, 0]  # this image's segments, in order
        local = torch.full_like(segments.batch, -1)
        local[index] = torch.arange(index.shape[0], device=index.device)
        _, group = torch.unique(segments.keys[2][index], return_inverse=True)
        own_local = local[inputs.own[pixel_in]]
        same = torch.eye(int(group.max()) + 1 if group.numel() else 0, dtype=torch.bool, device=group.device)
        sets = SegmentSets(group, group[own_local], same, ~same)
        prototypes = inputs.located_prototypes[index]
        return segment_contrast(inputs.located[pixel_in], own_local, prototypes, sets, self.concentration)


class SemanticAnnotation(Relation):
    """Semantic annotation: labelled pixels against the labelled segments of the batch and the memory bank; ``C⁺``
    those of the pixel's label, ``C⁻`` those of other labels; unlabelled segments are left out. Groups and kinds
    are labels (+1: 0 = unlabelled)."""

    def labels(self, inputs: RelationInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The label of every segment (the batch's, then the bank's) and of every pixel whose loss counts."""
        return inputs.labels, inputs.pixel_labels

    def summed_loss(self, inputs: RelationInputs) -> tuple[torch.Tensor, int]:
        targets, wanted = self.labels(inputs)
        rows = wanted >= 0
        k = int(max(targets.max(), wanted.max())) + 2
        labelled = torch.arange(k, device=inputs.own.device) > 0
        same = torch.eye(k, dtype=torch.bool, device=inputs.own.device) & labelled[None]
        sets = SegmentSets(targets + 1, wanted[rows] + 1, same, labelled[None] & labelled[:, None] & ~same)
        total = segment_contrast(inputs.pixels[rows], inputs.own_global[rows], inputs.batch.prototypes, sets,
                                 self.concentration, inputs.memory.prototypes)  # fmt: skip
        return total, int(rows.sum())


class FeatureAffinity(SemanticAnnotation):
    """Feature affinity: every unlabelled segment takes the label of its most similar labelled segment, and every
    pixel of a labelled segment then contrasts as in :class:`SemanticAnnotation` (weight 0 by default: the reference
    code builds it but never calls it)."""

    def labels(self, inputs: RelationInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The propagated label of every segment, and of every pixel whose loss counts: its segment's."""
        targets = self.propagate(torch.cat([inputs.batch.prototypes, inputs.memory.prototypes]), inputs.labels)
        return targets, targets[inputs.own_global]

    @staticmethod
    def propagate(prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each unlabelled segment takes the label of its most similar labelled segment."""
        labelled = labels >= 0
        if not labelled.any():
            return labels
        with torch.no_grad():
            nearest = (prototypes.detach() @ prototypes.detach()[labelled].T).argmax(1)
        return torch.where(labelled, labels, labels[labelled][nearest])


class SemanticCooccurrence(Relation):
    """Semantic co-occurrence: every pixel against every segment of the batch and the memory bank; ``C⁺`` the
    segments of images sharing a tag with the pixel's image (all of its own image's), ``C⁻`` the others. Groups are
    images, a pixel's kind is its image."""

    def summed_loss(self, inputs: RelationInputs) -> tuple[torch.Tensor, int]:
        b, first = inputs.images, inputs.first_image
        shared = (inputs.tags.float() @ inputs.image_tags.float().T) > 0  # B × images
        shared[:, first : first + b] |= torch.eye(b, dtype=torch.bool, device=inputs.own.device)
        sets = SegmentSets(inputs.segment_image, inputs.pixel_image, shared, ~shared)
        total = segment_contrast(inputs.pixels, inputs.own_global, inputs.batch.prototypes, sets, self.concentration,
                                 inputs.memory.prototypes)  # fmt: skip
        return total, inputs.pixels.shape[0]


class PixelSegmentContrastLoss(nn.Module):
    """SPML's loss (eq. 4): ``Σ_r λ_r · mean_i L_r(i)`` over four pixel-to-segment relations.

    Per batch: spherical k-means of each image's embeddings with location (grid ``grid``, ``iterations``), split so
    that no segment straddles two labels or two over-segmentation regions; segment features are the normalised means
    of the pixels' embeddings (with gradient). The relations (:class:`Relation`, each a :func:`segment_contrast`) are
    :class:`ImageSimilarity`, :class:`SemanticAnnotation`, :class:`SemanticCooccurrence` and
    :class:`FeatureAffinity`, by name in ``relations``.

    The memory bank (:class:`SegmentMemoryBank`, in ``state_dict()``) keeps ``memory`` iterations of segments
    (detached, with their labels and tags), which enlarge the annotation, co-occurrence and affinity sets. Under
    torchrun the batch's segments are every process's (gathered with their gradient) and the bank holds global
    batches; the similarity relation is per image and stays local. ``pixels_per_image`` (None: all, as in the paper)
    draws that many pixels of each image at random whose losses count; segments are still the means of all their
    pixels. The loss is then an unbiased estimate of the full one at a fraction of its O(pixels × segments) cost.
    """

    def __init__(
        self,
        similarity: ImageSimilarity = ImageSimilarity(0.1, 16.0),  # noqa: B008  (frozen and stateless)
        annotation: SemanticAnnotation = SemanticAnnotation(1.0, 6.0),  # noqa: B008
        cooccurrence: SemanticCooccurrence = SemanticCooccurrence(0.5, 8.0),  # noqa: B008
        affinity: FeatureAffinity = FeatureAffinity(0.0, 6.0),  # noqa: B008
        grid: tuple[int, int] = (6, 6),
        iterations: int = 10,
        memory: int = 2,
        pixels_per_image: int | None = None,
    ) -> None:
        super().__init__()
        if grid[0] < 1 or grid[1] < 1 or iterations < 0 or memory < 0:
            raise ValueError(f"grid must be positive, iterations and memory >= 0; got {grid}, {iterations}, {memory}")
        self.relations: dict[str, Relation] = {"similarity": similarity, "annotation": annotation,
                                               "cooccurrence": cooccurrence, "affinity": affinity}  # fmt: skip
        if pixels_per_image is not None and pixels_per_image < 1:
            raise ValueError(f"pixels_per_image must be None or >= 1, got {pixels_per_image}")
        self.grid, self.iterations, self.pixels_per_image = grid, iterations, pixels_per_image
        self.bank = SegmentMemoryBank(memory)

    def segment(self, embeddings: torch.Tensor, labels: torch.Tensor, regions: torch.Tensor, valid: torch.Tensor):
        """The batch's segments: k-means on the location-augmented embeddings, split by labels and regions."""
        b, _, h, w = embeddings.shape
        located = with_location(embeddings.detach())
        init = grid_labels(h, w, *self.grid, device=embeddings.device).reshape(1, -1).expand(b, -1)
        features = located.flatten(2).transpose(1, 2)
        clusters = spherical_kmeans(features, init, self.grid[0] * self.grid[1], self.iterations, valid.reshape(b, -1))
        return split_segments(clusters, labels.reshape(b, -1), regions.reshape(b, -1), valid=valid.reshape(b, -1))

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        regions: torch.Tensor,
        tags: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss (eq. 4) and each relation's ``mean_i L_r(i)`` by name, detached; the batch's segments then join
        the memory bank. ``embeddings`` ``B×D×h×w`` (unit length over D), ``labels`` ``B×h×w`` (class ids,
        ``UNLABELLED`` = −1), ``regions`` ``B×h×w`` over-segmentation ids, ``tags`` ``B×C`` 0/1 image classes,
        ``valid`` ``B×h×w``."""
        b, d, h, w = embeddings.shape
        if valid is None:
            valid = torch.ones(b, h, w, dtype=torch.bool, device=embeddings.device)
        segments = self.segment(embeddings, labels, regions, valid)
        pixels = embeddings.flatten(2).transpose(1, 2).reshape(b * h * w, d)
        own = segments.index.reshape(-1)
        keep = own >= 0
        pixels, own = pixels[keep], own[keep]
        pixel_batch = torch.arange(b, device=own.device).repeat_interleave(h * w)[keep]
        prototypes = segment_means(pixels, own, segments.count)  # from every pixel
        located = with_location(embeddings).flatten(2).transpose(1, 2).reshape(b * h * w, d + 2)[keep]
        located_protos = segment_means(located, own, segments.count)
        # The pixels whose loss counts: all of them, or a random subset of each image's.
        chosen = self._sample(pixel_batch, b)
        pixels, own, pixel_batch, located = pixels[chosen], own[chosen], pixel_batch[chosen], located[chosen]
        pixel_label = labels.reshape(-1)[keep][chosen]

        # The global batch's segments (under torchrun, every process's, with gradient; this process's start at
        # ``first``, its images at ``first_image``), then the memory bank's.
        batch_protos, first = gather_rows(prototypes)
        batch_tags, first_image = gather_rows(tags.bool())
        batch = SegmentBatch(batch_protos, gather_rows(segments.keys[1])[0], batch_tags,
                             gather_rows(segments.batch + first_image)[0])  # fmt: skip
        inputs = RelationInputs(pixels, located, own, own + first, pixel_batch, pixel_label, segments, located_protos,
                                tags, first_image, batch, self.bank.recall(batch))  # fmt: skip

        zero = pixels.new_zeros((), dtype=compute_dtype(pixels))
        terms: dict[str, torch.Tensor] = {}
        for name, relation in self.relations.items():
            summed, count = relation.summed_loss(inputs) if relation.weight else (zero, 0)
            terms[name] = summed / count if count else zero
        self.bank.append(batch)
        total = sum(self.relations[k].weight * v for k, v in terms.items())
        return total, {k: v.detach() for k, v in terms.items()}

    def _sample(self, pixel_batch: torch.Tensor, images: int) -> torch.Tensor:
        """Indices of the pixels whose loss counts: all, or ``pixels_per_image`` drawn at random per image."""
        if self.pixels_per_image is None:
            return torch.arange(pixel_batch.shape[0], device=pixel_batch.device)
        picked = []
        for image in range(images):
            members = (pixel_batch == image).nonzero()[:, 0]
            order = torch.randperm(members.shape[0], device=members.device)[: self.pixels_per_image]
            picked.append(members[order.sort().values])
        return torch.cat(picked)
