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


def segment_contrast(
    embeddings: torch.Tensor,
    own: torch.Tensor,
    prototypes: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    concentration: float,
) -> torch.Tensor:
    """Per-pixel ``−log(Σ_{s∈C⁺} exp(κ e_iᵀμ_s) / Σ_{s∈C⁺∪C⁻} exp(κ e_iᵀμ_s))`` (SPML eq. 3, SegSort+).

    ``embeddings`` ``N×D``, ``own`` ``N`` the pixel's own segment among the ``S×D`` ``prototypes``, ``positive`` /
    ``negative`` ``N×S`` masks. ``C⁺`` is the positives other than the own segment, or the own segment alone when
    there is no other positive; the own segment is never a negative.
    """
    dtype = compute_dtype(embeddings)
    logits = concentration * (embeddings.to(dtype) @ prototypes.to(dtype).T)  # N×S
    own_mask = F.one_hot(own, prototypes.shape[0]).bool()
    others = positive & ~own_mask
    numerator = torch.where(others.any(1, keepdim=True), others, own_mask)
    denominator = numerator | (negative & ~own_mask)
    log_num = torch.logsumexp(logits.masked_fill(~numerator, -torch.inf), 1)
    return torch.logsumexp(logits.masked_fill(~denominator, -torch.inf), 1) - log_num


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
    and affinity sets.
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
    ) -> None:
        super().__init__()
        if grid[0] < 1 or grid[1] < 1 or iterations < 0 or memory < 0:
            raise ValueError(f"grid must be positive, iterations and memory >= 0; got {grid}, {iterations}, {memory}")
        self.relations = {"similarity": similarity, "annotation": annotation, "cooccurrence": cooccurrence}
        self.relations["affinity"] = affinity
        self.grid, self.iterations = grid, iterations
        self.bank: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=memory)
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
        pixel_label = labels.reshape(-1)[keep]
        prototypes = segment_means(pixels, own, segments.count)
        seg_label, seg_region = segments.keys[1], segments.keys[2]
        seg_tags = tags[segments.batch].bool()

        # This batch's segments first (the own segments index them), then the memory bank's.
        current = (prototypes, seg_label, seg_tags)
        all_protos, all_labels, all_tags = (torch.cat(parts) for parts in zip(current, *self.bank, strict=True))

        terms: dict[str, torch.Tensor] = {}
        for name, relation in self.relations.items():
            if relation.weight == 0:
                terms[name] = pixels.new_zeros((), dtype=compute_dtype(pixels))
                continue
            if name == "similarity":
                located = with_location(embeddings).flatten(2).transpose(1, 2).reshape(b * h * w, d + 2)[keep]
                same_image = pixel_batch[:, None] == segments.batch[None]
                same_region = regions.reshape(-1)[keep][:, None] == seg_region[None]
                loss = segment_contrast(
                    located, own, segment_means(located, own, segments.count),
                    same_image & same_region, same_image & ~same_region, relation.concentration,
                )  # fmt: skip
            elif name == "cooccurrence":
                shared = (tags[pixel_batch].float() @ all_tags.float().T) > 0
                shared[:, : segments.count] |= pixel_batch[:, None] == segments.batch[None]
                loss = segment_contrast(pixels, own, all_protos, shared, ~shared, relation.concentration)
            else:  # annotation, affinity: labelled pixels against labelled segments
                targets = all_labels if name == "annotation" else self._propagate(all_protos, all_labels)
                wanted = pixel_label if name == "annotation" else targets[own]
                rows = wanted >= 0
                labelled = targets >= 0
                same = (wanted[rows][:, None] == targets[None]) & labelled[None]
                loss = segment_contrast(
                    pixels[rows], own[rows], all_protos, same, labelled[None] & ~same, relation.concentration
                )
            terms[name] = loss.mean() if loss.numel() else pixels.new_zeros((), dtype=compute_dtype(pixels))
        self.bank.append((prototypes.detach(), seg_label, seg_tags))
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return sum(self.relations[k].weight * v for k, v in terms.items())

    @staticmethod
    def _propagate(prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Feature affinity: each unlabelled segment takes the label of its most similar labelled segment."""
        labelled = labels >= 0
        if not labelled.any():
            return labels
        with torch.no_grad():
            nearest = (prototypes.detach() @ prototypes.detach()[labelled].T).argmax(1)
        return torch.where(labelled, labels, labels[labelled][nearest])
