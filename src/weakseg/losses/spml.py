"""Pixel-to-segment contrast (Ke, Hwang et al., SPML, papers/spml-pixel-to-segment-contrast.txt; METHODS.md §4).

* :func:`grid_labels`, :func:`with_location`, :func:`spherical_kmeans` — per-image spherical k-means of the
  embeddings (with their (y, x) location), initialised on a regular grid, batched.
* :func:`split_segments` — segments that straddle no two weak-label classes and no two over-segmentation regions.
* :func:`segment_means` — a segment's feature: the L2-normalised mean of its pixels' embeddings.
* :func:`segment_contrast` — ``−log Σ_{C⁺} exp(κ e·μ) / Σ_{C⁺ ∪ C⁻} exp(κ e·μ)`` per pixel, the pixel's own segment left
  out of ``C⁺`` unless it is the only positive (SegSort+, paper eq. 3).
* :class:`PixelSegmentContrastLoss` — the four relations of SPML (low-level image similarity, semantic annotation,
  semantic co-occurrence, feature affinity) weighted and summed (eq. 4), with a memory bank of the last iterations'
  segments.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from weakseg.engine.distributed import gather_rows
from weakseg.losses.cam import compute_dtype

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


def spherical_kmeans(features: torch.Tensor, labels: torch.Tensor, clusters: int, iterations: int = 10) -> torch.Tensor:
    """Spherical k-means of each image's pixels, all images at once, without gradient.

    ``features`` ``B×N×D`` (unit rows), ``labels`` ``B×N`` initial cluster ids in ``[0, clusters)``. Each iteration
    is an M-step ``μ_s = normalise(Σ_{i∈s} e_i)`` then an E-step ``z_i = argmax_s e_iᵀ μ_s`` (METHODS.md §4); an
    empty cluster's centroid is 0. Returns the ``B×N`` cluster ids.
    """
    with torch.no_grad():
        features = features.detach()
        b, _, d = features.shape
        for _ in range(iterations):
            sums = features.new_zeros(b, clusters, d).scatter_add_(1, labels[..., None].expand(-1, -1, d), features)
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
    segment is a maximal set of valid pixels of one image that agree on every partition."""
    first = partitions[0]
    b, n = first.shape
    batch = torch.arange(b, device=first.device)[:, None].expand(b, n)
    stacked = torch.stack([batch, *partitions]).reshape(len(partitions) + 1, -1)
    index = torch.full((b * n,), UNLABELLED, dtype=torch.long, device=first.device)
    keep = torch.ones(b * n, dtype=torch.bool, device=first.device) if valid is None else valid.reshape(-1).bool()
    columns, inverse = torch.unique(stacked[:, keep], dim=1, return_inverse=True)
    index[keep] = inverse
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
    chunk: int = 4096,
) -> torch.Tensor:
    """Per-pixel ``−log(Σ_{s∈C⁺} exp(κ e_iᵀμ_s) / Σ_{s∈C⁺∪C⁻} exp(κ e_iᵀμ_s))`` (SPML eq. 3, SegSort+).

    ``embeddings`` ``N×D`` and ``prototypes`` ``S×D`` of unit length, ``own`` ``N`` the pixel's own segment. ``C⁺`` is
    the positives other than the own segment, or the own segment alone when there is no other positive; the own
    segment is never a negative. Pixels are taken ``chunk`` at a time and, under autograd, each chunk is recomputed
    in the backward pass (activation checkpointing): memory stays O(chunk·S), never O(N·S).
    """
    out = []
    for start in range(0, embeddings.shape[0], chunk):
        rows = slice(start, start + chunk)
        args = (embeddings[rows], own[rows], sets.kind[rows], prototypes, sets, concentration)
        if torch.is_grad_enabled() and (embeddings.requires_grad or prototypes.requires_grad):
            out.append(checkpoint(_contrast_rows, *args, use_reentrant=False))
        else:
            out.append(_contrast_rows(*args))
    return torch.cat(out) if out else embeddings.new_zeros(0)


def _contrast_rows(
    embeddings: torch.Tensor,
    own: torch.Tensor,
    kind: torch.Tensor,
    prototypes: torch.Tensor,
    sets: SegmentSets,
    kappa: float,
) -> torch.Tensor:
    dtype = compute_dtype(embeddings)
    groups = sets.positive.shape[1]
    members = F.one_hot(sets.group, groups).to(dtype)  # S×G
    # Unit vectors: κ e·μ ∈ [−κ, κ], so exp(κ(e·μ − 1)) ∈ [e^{−2κ}, 1] needs no max-shift.
    weights = torch.addmm(embeddings.new_full((), -kappa, dtype=dtype), embeddings.to(dtype), prototypes.to(dtype).T,
                          alpha=kappa).exp_()  # n×S  # fmt: skip
    by_group = weights @ members  # n×G: Σ exp(κ(e·μ − 1)) over each group's segments
    positive = sets.positive[kind]  # n×G
    negative = sets.negative[kind] & ~positive
    own_weight = weights.gather(1, own[:, None])[:, 0]
    own_group = sets.group[own][:, None]
    own_positive = positive.gather(1, own_group)[:, 0].to(dtype)
    own_negative = negative.gather(1, own_group)[:, 0].to(dtype)
    others = (positive.to(dtype) * members.sum(0)).sum(1) - own_positive  # positives besides the own segment
    pos_sum = (by_group * positive).sum(1) - own_positive * own_weight
    numerator = torch.where(others > 0, pos_sum, own_weight)
    rest = (by_group * negative).sum(1) - own_negative * own_weight
    return torch.log(numerator + rest) - torch.log(numerator)


@dataclass
class Relation:
    weight: float
    concentration: float


class PixelSegmentContrastLoss(nn.Module):
    """SPML's loss (eq. 4): ``Σ_r λ_r · mean_i L_r(i)`` over four pixel-to-segment relations.

    Per batch: spherical k-means of each image's embeddings with location (grid ``grid``, ``iterations``), split so
    that no segment straddles two labels or two over-segmentation regions; segment features are the normalised means
    of the pixels' embeddings (with gradient). The relations, each a :func:`segment_contrast`:

    * ``similarity`` (low-level image similarity): segments of the pixel's image; ``C⁺`` those of its region, on the
      location-augmented embeddings;
    * ``annotation`` (semantic annotation): labelled pixels against labelled segments (this batch's and the memory
      bank's); ``C⁺`` those of the pixel's label; unlabelled segments are left out;
    * ``cooccurrence`` (semantic co-occurrence): every pixel against every segment; ``C⁺`` the segments of images
      sharing a tag with the pixel's image (all of its own image's), ``C⁻`` the others;
    * ``affinity`` (feature affinity): unlabelled segments take the label of their most similar labelled segment, and
      every pixel of a labelled segment then contrasts as in ``annotation`` (weight 0 by default: the reference code
      builds it but never calls it).

    ``memory`` iterations of segments (detached, with their labels and tags) enlarge the annotation, co-occurrence
    and affinity sets. Under torchrun the batch's segments are every process's (gathered with their gradient) and
    the bank holds global batches; the similarity relation is per image and stays local. ``pixels_per_image``
    (None: all, as in the paper) draws that many pixels of each image at random whose losses count; segments are
    still the means of all their pixels. The loss is then an unbiased estimate of the full one at a fraction of its
    O(pixels × segments) cost.
    """

    def __init__(
        self,
        similarity: Relation = Relation(0.1, 16.0),  # noqa: B008  (frozen values, not shared state)
        annotation: Relation = Relation(1.0, 6.0),  # noqa: B008
        cooccurrence: Relation = Relation(0.5, 8.0),  # noqa: B008
        affinity: Relation = Relation(0.0, 6.0),  # noqa: B008
        grid: tuple[int, int] = (6, 6),
        iterations: int = 10,
        memory: int = 2,
        pixels_per_image: int | None = None,
    ) -> None:
        super().__init__()
        if grid[0] < 1 or grid[1] < 1 or iterations < 0 or memory < 0:
            raise ValueError(f"grid must be positive, iterations and memory >= 0; got {grid}, {iterations}, {memory}")
        self.relations = {"similarity": similarity, "annotation": annotation, "cooccurrence": cooccurrence}
        self.relations["affinity"] = affinity
        if pixels_per_image is not None and pixels_per_image < 1:
            raise ValueError(f"pixels_per_image must be None or >= 1, got {pixels_per_image}")
        self.grid, self.iterations, self.pixels_per_image = grid, iterations, pixels_per_image
        # (prototypes, labels, image tags, image of each segment) of the last iterations, detached
        self.bank: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=memory)
        self.last_terms: dict[str, torch.Tensor] = {}

    def segment(self, embeddings: torch.Tensor, labels: torch.Tensor, regions: torch.Tensor, valid: torch.Tensor):
        """The batch's segments: k-means on the location-augmented embeddings, split by labels and regions."""
        b, _, h, w = embeddings.shape
        located = with_location(embeddings.detach())
        init = grid_labels(h, w, *self.grid, device=embeddings.device).reshape(1, -1).expand(b, -1)
        features = located.flatten(2).transpose(1, 2)
        clusters = spherical_kmeans(features, init, self.grid[0] * self.grid[1], self.iterations)
        return split_segments(clusters, labels.reshape(b, -1), regions.reshape(b, -1), valid=valid.reshape(b, -1))

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        regions: torch.Tensor,
        tags: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``embeddings`` ``B×D×h×w`` (unit length over D), ``labels`` ``B×h×w`` (class ids, ``UNLABELLED`` = −1),
        ``regions`` ``B×h×w`` over-segmentation ids, ``tags`` ``B×C`` 0/1 image classes, ``valid`` ``B×h×w``.
        The detached terms are left in ``last_terms``."""
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
        seg_label = segments.keys[1]

        # The global batch's segments first (under torchrun, every process's, with gradient; this process's start at
        # ``first``, its images at ``first_image``), then the memory bank's: prototypes, labels, and per image
        # (numbered on from the batch's) its tags.
        batch_protos, first = gather_rows(prototypes)
        batch_tags, first_image = gather_rows(tags.bool())
        batch_labels, batch_images = gather_rows(seg_label)[0], gather_rows(segments.batch + first_image)[0]
        all_protos = torch.cat([batch_protos, *(entry[0].to(prototypes.dtype) for entry in self.bank)])
        all_labels = torch.cat([batch_labels, *(entry[1] for entry in self.bank)])
        image_tags, all_images, offset = [batch_tags], [batch_images], batch_tags.shape[0]
        for _, _, bank_tags, bank_images in self.bank:
            image_tags.append(bank_tags)
            all_images.append(bank_images + offset)
            offset += bank_tags.shape[0]
        all_tags, all_images = torch.cat(image_tags), torch.cat(all_images)
        own_any = own + first  # the pixel's own segment among all segments

        terms: dict[str, torch.Tensor] = {}
        for name, relation in self.relations.items():
            if relation.weight == 0:
                terms[name] = pixels.new_zeros((), dtype=compute_dtype(pixels))
                continue
            if name == "similarity":  # per image: groups are its regions, a pixel's kind is its own region
                loss = torch.cat([
                    self._similarity(located, own, located_protos, segments, pixel_batch == image,
                                     segments.batch == image, relation.concentration)
                    for image in range(b)
                ])  # fmt: skip
            elif name == "cooccurrence":  # groups: the images of this batch and of the memory bank; kinds: images
                shared = (tags.float() @ all_tags.float().T) > 0  # B × images
                shared[:, first_image : first_image + b] |= torch.eye(b, dtype=torch.bool, device=own.device)
                sets = SegmentSets(all_images, pixel_batch, shared, ~shared)
                loss = segment_contrast(pixels, own_any, all_protos, sets, relation.concentration)
            else:  # annotation, affinity: groups and kinds are labels (+1: 0 = unlabelled)
                targets = all_labels if name == "annotation" else self._propagate(all_protos, all_labels)
                wanted = pixel_label if name == "annotation" else targets[own_any]
                rows = wanted >= 0
                k = int(max(targets.max(), wanted.max())) + 2
                labelled = torch.arange(k, device=own.device) > 0
                same = torch.eye(k, dtype=torch.bool, device=own.device) & labelled[None]
                sets = SegmentSets(targets + 1, wanted[rows] + 1, same, labelled[None] & labelled[:, None] & ~same)
                loss = segment_contrast(pixels[rows], own_any[rows], all_protos, sets, relation.concentration)
            terms[name] = loss.mean() if loss.numel() else pixels.new_zeros((), dtype=compute_dtype(pixels))
        self.bank.append((batch_protos.detach(), batch_labels, batch_tags, batch_images))
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return sum(self.relations[k].weight * v for k, v in terms.items())

    @staticmethod
    def _similarity(
        located: torch.Tensor,
        own: torch.Tensor,
        located_protos: torch.Tensor,
        segments: Segments,
        pixel_in: torch.Tensor,
        segment_in: torch.Tensor,
        concentration: float,
    ) -> torch.Tensor:
        """Low-level image similarity for one image's pixels: ``C⁺`` the segments of the pixel's region, ``C⁻`` the
        image's other segments."""
        index = segment_in.nonzero()[:, 0]  # this image's segments, in order
        local = torch.full_like(segments.batch, -1)
        local[index] = torch.arange(index.shape[0], device=index.device)
        _, group = torch.unique(segments.keys[2][index], return_inverse=True)
        own_local = local[own[pixel_in]]
        same = torch.eye(int(group.max()) + 1 if group.numel() else 0, dtype=torch.bool, device=group.device)
        sets = SegmentSets(group, group[own_local], same, ~same)
        return segment_contrast(located[pixel_in], own_local, located_protos[index], sets, concentration)

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

    @staticmethod
    def _propagate(prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Feature affinity: each unlabelled segment takes the label of its most similar labelled segment."""
        labelled = labels >= 0
        if not labelled.any():
            return labels
        with torch.no_grad():
            nearest = (prototypes.detach() @ prototypes.detach()[labelled].T).argmax(1)
        return torch.where(labelled, labels, labels[labelled][nearest])
