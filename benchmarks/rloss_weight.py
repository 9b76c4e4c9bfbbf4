"""The dense CRF loss's weight for our crops that balances partial CE as the reference's 2e-9 does on its crops.

    python -m benchmarks.rloss_weight [--data-root ../shared/data] [--images 60] [--crop 256] [--scale 0.5 1.5]

The CRF term's gradient per pixel is ``weight · h(W·S)_p / B`` and partial CE's is ``1 / labelled pixels``, a fixed
fraction of the crop's real pixels; their balance is therefore ``weight · 1ᵀ(hW)1`` summed over the crop's real
pixels (the CRF loss of a constant labelling, up to sign). This script averages ``1ᵀ(hW)1`` over random crops of the
voc454 training photos, filtered as ``DenseCRFLoss`` does (scale 0.5, σ_rgb 15, σ_xy 100, the reference's units):

* the reference's crops (the PyTorch port's ``RandomScaleCrop``: short side scaled to a random length in
  [0.5·513, 2·513], padded to 513² and cropped there, padding outside the ROI);
* ours (``augment``: the photo scaled by a random factor in ``--scale``, padded, cropped to ``--crop``²);

and prints the weight ``2e-9 × mean(reference) / mean(ours)``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from benchmarks.common import entry_point
from weakseg.losses import DenseCRFLoss

REFERENCE_WEIGHT = 2e-9
REFERENCE_CROP = 513


def random_crop(photo: Image.Image, scale: float, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` scaled by ``scale``, padded at the bottom and right to ``crop`` and cropped at random: the crop and its
    ROI (1 on real pixels)."""
    w, h = photo.size
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.zeros((max(size[1], crop), max(size[0], crop), 3), np.float32)
    roi = np.zeros(image.shape[:2], np.float32)
    image[: size[1], : size[0]] = np.asarray(photo.resize(size, Image.BILINEAR), np.float32)
    roi[: size[1], : size[0]] = 1
    y0, x0 = rng.integers(0, image.shape[0] - crop + 1), rng.integers(0, image.shape[1] - crop + 1)
    return image[y0 : y0 + crop, x0 : x0 + crop], roi[y0 : y0 + crop, x0 : x0 + crop]


def constant_labelling_mass(loss: DenseCRFLoss, image: np.ndarray, roi: np.ndarray) -> float:
    """``1ᵀ(hW)1`` over the ROI at the loss's scale: minus its loss of a one-class labelling, with weight 1."""
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    return -float(loss(torch.ones(1, 1, *roi.shape), tensor, torch.from_numpy(roi)[None]))


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("rloss_weight", __doc__)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.5))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = sorted((args.data_root / "voc454" / "JPEGImages").glob("*.jpg"))[: args.images]
    rng = np.random.default_rng(args.seed)
    loss = DenseCRFLoss(weight=1.0)
    reference, ours = [], []
    for file in files:
        photo = Image.open(file).convert("RGB")
        short = min(photo.size)
        ref_scale = rng.integers(int(0.5 * REFERENCE_CROP), int(2.0 * REFERENCE_CROP) + 1) / short
        reference.append(constant_labelling_mass(loss, *random_crop(photo, ref_scale, REFERENCE_CROP, rng)))
        ours.append(constant_labelling_mass(loss, *random_crop(photo, rng.uniform(*args.scale), args.crop, rng)))
    ratio = float(np.mean(reference) / np.mean(ours))
    print(
        f"{len(files)} voc454 photos; mean 1ᵀ(hW)1 at scale 0.5: reference crops {np.mean(reference):.4g}, "
        f"ours ({args.crop}², scale {args.scale[0]}–{args.scale[1]}) {np.mean(ours):.4g}; ratio {ratio:.2f}"
    )
    print(f"weight for our crops equivalent to the reference's {REFERENCE_WEIGHT:g}: {REFERENCE_WEIGHT * ratio:.3g}")


if __name__ == "__main__":
    main()
