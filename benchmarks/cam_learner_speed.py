"""What a CAM-stage training step costs per learner, and PPC's loss on its own.

    python benchmarks/cam_learner_speed.py [--steps 6] [--batch 8] [--crop 256]

All learners run one after the other in this process on the same random batch (standard-profile shapes: lite0,
batch 8, 256² crops, 128² second view), so the ratios between rows are meaningful. Prints per learner the median
seconds of a forward + backward + SGD step and its ratio to `cam`, then the median time of
`PixelPrototypeContrastLoss` alone (forward + backward, at the same shapes) and its share of the `ppc` step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from steptime import build, median_step_seconds

from weakseg.data.classes import get_class_set
from weakseg.methods import build_method

LEARNERS = {
    "cam": ("cam", {}),
    "seam": ("seam", {}),
    "hfpl": ("hfpl", {}),
    "ppc (on seam)": ("ppc", {}),
    "ppc (on hfpl)": ("ppc", {"base": "hfpl"}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    voc = get_class_set("voc")
    batch = {
        "image": torch.randint(0, 256, (args.batch, 3, args.crop, args.crop), dtype=torch.uint8),
        "tags": (torch.rand(args.batch, voc.num_classes) < 0.1).float(),
        "valid": torch.ones(args.batch, args.crop, args.crop, dtype=torch.bool),
    }
    batch["tags"][:, 15] = 1.0  # every image holds a person
    images = (batch["image"].float() / 255 - 0.5) / 0.25
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, crop {args.crop}, median of {args.steps} steps")
    medians = {}
    for name, (method_name, method_args) in LEARNERS.items():
        model, method = build(method_name, method_args, "tags", voc)
        medians[name] = median_step_seconds(model, method, images, batch, args.steps)
        print(f"  {name:16s} {medians[name]:.3f} s/step  ×{medians[name] / medians['cam']:.2f} of cam")
    # The loss alone at the standard shapes: both views on the second view's grid (stride 16 at 128²).
    grid = args.crop // 32
    embeddings = [torch.randn(args.batch, 128, grid, grid).requires_grad_() for _ in range(2)]
    scores = tuple(torch.randn(args.batch, voc.num_classes - 1, grid, grid) for _ in range(2))
    loss_fn = build_method("ppc", None, "tags", voc).contrast
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        normalised = tuple(torch.nn.functional.normalize(e, dim=1) for e in embeddings)
        loss_fn(normalised, scores, batch["tags"][:, 1:]).backward()
        times.append(time.perf_counter() - start)
    contrast = statistics.median(times)
    share = 100 * contrast / medians["ppc (on seam)"]
    print(f"  PixelPrototypeContrastLoss alone (forward + backward): {contrast:.4f} s, {share:.1f}% of the ppc step")


if __name__ == "__main__":
    main()
