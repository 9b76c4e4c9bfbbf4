"""How close the permutohedral lattice comes to the exact dense Gaussian filter on real photos.

    python -m benchmarks.bilateral_accuracy [--data-root ../shared/data] [--images 12] [--size 120]

For voc454 photos resized to ``size``², a smooth random 21-class softmax per image and the CRF loss's kernels (RGB+xy
with σ_rgb 15 and σ_xy 100 at 320² scaled to ``size``; xy only with σ_xy 10), prints per kernel: the least-squares
scale between lattice and exact output (what ``LATTICE_PEAK`` should be multiplied by; 1.00 when calibrated), the
relative error ‖W̃S − WS‖/‖WS‖ of the filter output, and the relative error of the CRF loss value ``SᵀWS``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from benchmarks.common import entry_point
from weakseg.ops.bilateral import PermutohedralLattice, exact_gaussian_filter, pixel_features


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("bilateral_accuracy", __doc__)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=120)
    args = parser.parse_args(argv)
    files = sorted((args.data_root / "voc454" / "JPEGImages").glob("*.jpg"))[: args.images]
    size = (args.size, args.size)
    image = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize(size)) for f in files]))
    image = image.permute(0, 3, 1, 2).float()
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(len(files), 21, 6, 6, generator=generator) * 3
    probs = torch.softmax(torch.nn.functional.interpolate(coarse, size=size, mode="bilinear"), 1)
    values = probs.flatten(2).transpose(1, 2)
    kernels = {"rgb+xy (d=5)": (100 * args.size / 320, 15.0), "xy only (d=2)": (10.0, None)}
    print(f"{len(files)} VOC photos at {args.size}², 21-class smooth random softmax")
    for name, (sigma_xy, sigma_rgb) in kernels.items():
        features = pixel_features(image, size, sigma_xy, sigma_rgb)
        exact = exact_gaussian_filter(features.double(), values.double()).float()
        approx = PermutohedralLattice(features).filter(values)
        scale = float((approx * exact).sum() / (approx * approx).sum())
        error = float((approx - exact).norm() / exact.norm())
        loss_error = float((values * approx).sum() / (values * exact).sum() - 1)
        print(f"{name:14s} best scale {scale:.3f}   filter error {error:.2%}   loss-value error {loss_error:+.2%}")


if __name__ == "__main__":
    main()
