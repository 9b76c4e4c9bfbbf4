"""Dense Gaussian (bilateral) filtering: ``(W·V)_p = Σ_q exp(−|f_p − f_q|²/2) · V_q`` over all pixel pairs.

One mechanism serves the dense CRF loss, the normalized cut loss and dense CRF post-processing:

* :class:`PermutohedralLattice` — the approximate filter of Adams, Baek & Davis (Eurographics 2010), in PyTorch.
  Features are embedded in the hyperplane ``Σx = 0`` of ``R^{d+1}``, whose integer points with all coordinates
  congruent mod ``d+1`` form the permutohedral lattice; every pixel splats to the ``d+1`` vertices of its
  enclosing simplex with barycentric weights, the lattice is blurred with ``[½, 1, ½]`` along each of the ``d+1``
  lattice directions and read back with the same weights. Splat and slice are sparse matrices (CSR), built once
  per image batch and reused for every channel; the blur gathers neighbours found by binary search in the sorted
  vertex codes. Time and memory grow linearly with pixels (plus one sort). Two choices differ from the reference
  C++ filter: the blur runs in both direction orders and averages them, so the filter is a symmetric matrix like
  the exact kernel (the CRF loss's gradient ``2·W·S`` relies on it), and the output is rescaled so that it
  approximates ``exp(−|Δf|²/2)`` itself (``LATTICE_PEAK``), so loss weights mean the same for every filter.
* :func:`exact_gaussian_filter` — the brute-force sum over all pairs, in chunks; the reference for tests and small
  inputs.
* :func:`local_gaussian_filter` — the same kernel restricted to a ``k×k`` (dilated) window around each pixel, the
  Gated-CRF-loss neighbourhood (Obukhov et al. 2019); exact within the window, good for GPUs.

Features are the pixel coordinates divided by ``σ_xy`` and (optionally) the RGB values divided by ``σ_rgb``
(:func:`pixel_features`). Every filter keeps the self term ``w_pp = 1``, as the Potts relaxation ``SᵀWS`` does.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

# The lattice's kernel has the Gaussian's width but not its height: it is a piecewise-polynomial bump, and mass
# blurred onto vertices that no pixel splatted to is lost. Dividing by this factor makes the output approximate
# exp(−|Δf|²/2) itself. It is the least-squares scale between the lattice and the exact filter over 12 VOC photos
# (`benchmarks/bilateral_accuracy.py`), for the RGB+xy (d = 5) and xy-only (d = 2) kernels.
LATTICE_PEAK = {2: 1.09, 5: 0.572}


def pixel_features(image: torch.Tensor | None, size: tuple[int, int], sigma_xy: float, sigma_rgb: float | None):
    """Per-pixel features ``(x/σ_xy, y/σ_xy[, r/σ_rgb, g/σ_rgb, b/σ_rgb])`` as ``B×(H·W)×d`` (float32).

    ``image`` is ``B×3×H×W`` on the 0–255 scale; with ``sigma_rgb=None`` the features are positions only (a
    Gaussian kernel) and ``image`` only gives the batch size and device.
    """
    h, w = size
    batch, device = image.shape[0], image.device
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    position = torch.stack([xs, ys]).div_(sigma_xy).expand(batch, -1, -1, -1)
    feats = position if sigma_rgb is None else torch.cat([position, image.float() / sigma_rgb], dim=1)
    return feats.flatten(2).transpose(1, 2).contiguous()


def _embedding(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``d×(d+1)`` isometric embedding into the hyperplane ``Σx = 0``, scaled by ``(d+1)·√(2/3)`` (Adams et al.)."""
    basis = torch.zeros(d + 1, d, dtype=torch.float64)
    for c in range(d):
        basis[: c + 1, c] = 1.0
        basis[c + 1, c] = -(c + 1)
        basis[:, c] /= math.sqrt((c + 1) * (c + 2))
    return (basis.T * (d + 1) * math.sqrt(2.0 / 3.0)).to(dtype=dtype, device=device)


def _radices(spans: list[int]) -> list[int]:
    """Mixed-radix place values for digits spanning ``spans`` values each, checked to fit exactly in a float64."""
    radix = [1]
    for extent in reversed(spans[1:]):
        radix.insert(0, radix[0] * extent)
    if radix[0] * spans[0] >= 2**52:
        raise ValueError("permutohedral lattice: feature range too large for 52-bit keys (check the sigmas)")
    return radix


class PermutohedralLattice:
    """A permutohedral lattice over ``features`` (``B×N×d``, already divided by the sigmas); apply with :meth:`filter`.

    Pixels are grouped by enclosing simplex first (one ``unique`` over ``B·N`` codes); vertices are then found per
    simplex, which is about four times fewer. Keys are coded as exact integers in float64 by a matrix product. Splat
    and slice are sparse matrices built once and reused for every channel and call. Images of a batch never share
    vertices.
    """

    def __init__(self, features: torch.Tensor) -> None:
        batch, n, d = features.shape
        if d not in LATTICE_PEAK:
            raise ValueError(f"permutohedral lattice: feature dimension {d} not calibrated (use 2 or 5)")
        self.batch, self.n, self.d = batch, n, d
        device = features.device
        embedding = _embedding(d, torch.float32, device)
        elevated = features.float() @ embedding
        # The remainder-0 point nearest each pixel, and the ranks of the differences (Adams et al., §3.1).
        rem0 = torch.round(elevated / (d + 1)) * (d + 1)
        order = torch.argsort(elevated - rem0, dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(d + 1, device=device).expand_as(order))
        rank = rank + (rem0.sum(-1, keepdim=True) / (d + 1)).round().long()
        low, high = rank < 0, rank > d
        rank = rank + (d + 1) * (low.long() - high.long())
        rem0 = rem0 + (d + 1) * (low.float() - high.float())

        # Barycentric weights of the enclosing simplex's d+1 vertices.
        offset = (elevated - rem0) / (d + 1)
        bary = torch.zeros(batch, n, d + 2, device=device)
        bary.scatter_add_(-1, d - rank, offset)
        bary.scatter_add_(-1, d + 1 - rank, -offset)
        bary[..., 0] += 1.0 + bary[..., d + 1]
        bary = bary[..., : d + 1].reshape(batch * n, d + 1)

        # Extent of each lattice coordinate over the pixels (Σ_i |E_ic|·range_i), with room for rounding, the simplex
        # corrections, the vertices and their neighbours (7·(d+1) at most): keys stay exact and collision-free.
        f_low, f_high = torch.aminmax(features.reshape(-1, d).float(), dim=0)
        reach = (embedding.abs() * (f_high - f_low)[:, None]).sum(0)
        extent = [int(v) + 4 * (d + 1) for v in reach[:d].ceil().tolist()]

        # A simplex is (image, remainder-0 point, ranks): code it, group the pixels, decode the groups.
        radix = _radices([batch] + [e // (d + 1) + 1 for e in extent] + [d + 1] * d)
        place = torch.tensor(radix, dtype=torch.float64, device=device)
        image = torch.arange(batch, device=device, dtype=torch.float64)[:, None] * place[0]
        digits = torch.cat([rem0[..., :d] / (d + 1), rank[..., :d].float()], dim=-1).double()
        simplices, pixel_simplex = torch.unique((digits @ place[1:] + image).view(-1).long(), return_inverse=True)
        fields = torch.zeros(simplices.numel(), 2 * d + 1, dtype=torch.float64, device=device)
        fields[pixel_simplex] = torch.cat(
            [torch.arange(batch, device=device).repeat_interleave(n)[:, None].double(), digits.view(-1, 2 * d)], dim=-1
        )
        fields = fields.round_().long()
        image_u, rem0_u, rank_u = fields[:, :1], fields[:, 1 : d + 1] * (d + 1), fields[:, d + 1 :]
        rem0_u = torch.cat([rem0_u, -rem0_u.sum(-1, keepdim=True)], dim=-1)
        rank_u = torch.cat([rank_u, d * (d + 1) // 2 - rank_u.sum(-1, keepdim=True)], dim=-1)

        # Vertex r of a simplex: rem0 + r, minus (d+1) where the rank exceeds d − r.
        r = torch.arange(d + 1, device=device)
        keys = rem0_u[:, None, :] + r[:, None] - (d + 1) * (rank_u[:, None, :] > (d - r)[:, None]).long()
        self._place = torch.tensor(_radices([batch] + [2 * e + 1 for e in extent]), dtype=torch.float64, device=device)
        image_u = image_u[:, None, :].expand(-1, d + 1, 1)
        vertex_keys = torch.cat([image_u, keys[..., :d]], dim=-1).reshape(-1, d + 1)
        vertices, vertex_of_slot = torch.unique((vertex_keys.double() @ self._place).long(), return_inverse=True)
        self.num_vertices = m = vertices.numel()
        unique_keys = vertex_keys.new_empty(m, d + 1)
        unique_keys[vertex_of_slot] = vertex_keys
        vertex_of_slot = vertex_of_slot.view(-1, d + 1)  # simplices × (d+1)

        # Slice: pixel p reads the d+1 vertices of its simplex.
        pixel_rows = torch.arange(0, batch * n * (d + 1) + 1, d + 1, device=device)
        pixel_vertices = vertex_of_slot[pixel_simplex].reshape(-1)
        self._slice = _csr(pixel_rows, pixel_vertices, bary.reshape(-1), (batch * n, m))
        # Splat, the transpose, in two steps: pixels → (vertex slot r, simplex) rows, then slots → vertices.
        pixel_order = torch.argsort(pixel_simplex, stable=True)
        starts = torch.bincount(pixel_simplex, minlength=simplices.numel()).cumsum(0)
        starts = torch.cat([starts.new_zeros(1), starts[:-1]])
        slot_rows = (r[:, None] * (batch * n) + starts).reshape(-1)
        slot_rows = torch.cat([slot_rows, slot_rows.new_tensor([batch * n * (d + 1)])])
        slot_size = (simplices.numel() * (d + 1), batch * n)
        self._gather_slots = _csr(slot_rows, pixel_order.repeat(d + 1), bary[pixel_order].T.reshape(-1), slot_size)
        self._slot_vertex = vertex_of_slot.T.reshape(-1)

        # Neighbours v ± ((d+1)·e_j − 1) along each direction j, found by binary search in the sorted codes.
        full = torch.cat([unique_keys, -unique_keys[:, 1:].sum(-1, keepdim=True)], dim=-1)[:, 1:]
        step = torch.full((d + 1, d + 1), -1, dtype=torch.long, device=device)
        step.fill_diagonal_(d)
        moved = full + torch.stack([-step, step], dim=1)[:, :, None, :]  # (d+1) × 2 × M × (d+1)
        moved_keys = torch.cat([unique_keys[:, :1].expand(d + 1, 2, m, 1), moved[..., :d]], dim=-1)
        codes = (moved_keys.double() @ self._place).long()
        found = torch.searchsorted(vertices, codes).clamp_(max=m - 1)
        # Row m of the lattice is all zero and stands for every absent neighbour (and neighbours itself).
        neighbours = torch.where(vertices[found] == codes, found, m)
        self.neighbours = torch.cat([neighbours, neighbours.new_full((d + 1, 2, 1), m)], dim=-1)
        self.scale = 1.0 / LATTICE_PEAK[d]

    def _blur(self, lattice: torch.Tensor, directions: range) -> torch.Tensor:
        """``[½, 1, ½]`` along each lattice direction in turn; row ``M`` stays zero (it stands for absent vertices)."""
        for j in directions:
            near = lattice.index_select(0, self.neighbours[j, 0])
            near += lattice.index_select(0, self.neighbours[j, 1])
            lattice = torch.add(lattice, near, alpha=0.5)
        return lattice

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """``W·V`` for ``values`` of shape ``B×N×C`` (float32 result)."""
        c = values.shape[-1]
        slots = self._gather_slots @ values.reshape(-1, c).float()
        lattice = slots.new_zeros(self.num_vertices + 1, c).index_add_(0, self._slot_vertex, slots)
        blurred = self._blur(lattice, range(self.d + 1))
        blurred += self._blur(lattice, range(self.d, -1, -1))
        out = self._slice @ blurred[:-1].mul_(0.5 * self.scale)
        return out.view(self.batch, self.n, c)


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix from trusted indices (no invariant checks; the beta-status warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(rows, cols, values, size=size, check_invariants=False)


def exact_gaussian_filter(features: torch.Tensor, values: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Brute force ``Σ_q exp(−|f_p − f_q|²/2) V_q`` over all pairs (``B×N×d`` features, ``B×N×C`` values)."""
    out = torch.empty(values.shape, dtype=torch.promote_types(values.dtype, features.dtype), device=values.device)
    for start in range(0, features.shape[1], chunk):
        block = features[:, start : start + chunk]
        distance = torch.cdist(block, features, compute_mode="donot_use_mm_for_euclid_dist")
        weights = torch.exp(-0.5 * distance.square())
        out[:, start : start + chunk] = weights @ values.to(out.dtype)
    return out


def dense_gaussian_filter(features: torch.Tensor, values: torch.Tensor, method: str = "permutohedral") -> torch.Tensor:
    """``W·V`` with ``method`` ``"permutohedral"`` (approximate, linear time) or ``"exact"`` (all pairs)."""
    if method == "exact":
        return exact_gaussian_filter(features, values)
    if method == "permutohedral":
        return PermutohedralLattice(features).filter(values)
    raise ValueError(f"unknown dense filter '{method}' (use permutohedral or exact)")


def local_gaussian_filter(
    values: torch.Tensor,
    image: torch.Tensor,
    sigma_xy: float,
    sigma_rgb: float,
    kernel_size: int = 5,
    dilation: int = 1,
) -> torch.Tensor:
    """The bilateral kernel restricted to a ``k×k`` window with ``dilation`` (Gated CRF loss), exactly.

    ``values`` is ``B×C×H×W``, ``image`` ``B×3×H×W`` (0–255). One shifted window offset at a time, so memory stays
    ``O(B·C·H·W)`` instead of unfold's ``k²`` copies; pixels outside the image contribute nothing.
    """
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"local filter: kernel_size must be odd and positive, got {kernel_size}")
    radius = (kernel_size // 2) * dilation
    h, w = values.shape[-2:]
    pad = (radius, radius, radius, radius)
    padded_values = F.pad(values.float(), pad)
    padded_image = F.pad(image.float(), pad)
    inside = F.pad(torch.ones_like(image[:, :1], dtype=torch.float32), pad)
    out = torch.zeros_like(values, dtype=torch.float32)
    image = image.float()
    for dy in range(-radius, radius + 1, dilation):
        for dx in range(-radius, radius + 1, dilation):
            window = (
                slice(None),
                slice(None),
                slice(radius + dy, radius + dy + h),
                slice(radius + dx, radius + dx + w),
            )
            colour = (padded_image[window] - image).square().sum(1, keepdim=True)
            weight = torch.exp(-(dx * dx + dy * dy) / (2 * sigma_xy**2) - colour / (2 * sigma_rgb**2))
            out += weight * inside[window] * padded_values[window]
    return out
