"""What a trained PMP model's on-the-fly pseudo-masks hold, scored against the masks of a split.

    python -m benchmarks.pmp_pseudo RUN/last.pt [--data-root ../shared/data] [--split train] [--images 40]

The run's model, expansion scores and point blots make each image's pseudo-mask as a training step does
(`PMP.pseudo_masks`), on the whole image rather than a crop. Printed for the pseudo-mask, for its network part (the
same without the blots: refined output ⊙ expanded fields, thresholded, plus the points' few pixels) and for the
point blots alone: the coverage (fraction of pixels labelled), the precision (fraction of labelled pixels whose label
is the mask's), the object precision (the same over the pixels labelled with an object class), the object recall
(fraction of object pixels labelled with their class) and the background share of the labelled pixels. Pooled over
the images. Without a background class (CamVid) every class counts as an object. The run's dataset is read from its
folder under ``--data-root``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.common import SCORES, entry_point, label_counts, label_scores, rerooted
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.loader import collate, sample_to_tensors
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.engine.device import normalize
from weakseg.methods import build_method


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("pmp_pseudo", __doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args(argv)

    model, recipe, state = load_model_from_checkpoint(args.checkpoint, torch.device("cpu"))
    if recipe.method != "pmp":
        parser.error(f"{args.checkpoint}: a {recipe.method} run, not pmp")
    recipe.data.root = rerooted(recipe.data.root, args.data_root)
    dataset = SegmentationDataset(recipe.data, args.split, kinds=("mask", "points"), required=("mask", "points"))
    classes = dataset.class_set
    method = build_method(recipe.method, recipe.method_args, recipe.supervision, classes)
    method.bind(recipe.data, Path(recipe.output_dir), len(dataset))
    method.load_state_dict(state.get("method", {}))
    with_blots = method.args.use_blots
    totals = {"pseudo-mask": np.zeros(9), "network part (no blots)": np.zeros(9), "point blots alone": np.zeros(9)}
    images = min(args.images, len(dataset))
    with torch.no_grad():
        for index in range(images):
            batch = collate([sample_to_tensors(method.prepare_sample(dataset[index]), classes.num_classes)])
            logits = model(normalize(batch["image"], *model.mean_std))["logits"]
            mask = batch["mask"][0].numpy()
            targets = []
            for use_blots in (with_blots, False):
                method.args.use_blots = use_blots
                targets.append(method.pseudo_masks(logits, batch)[0].numpy())
            method.args.use_blots = with_blots
            targets.append(batch["blots"][0].numpy())  # all ignore when the run has no blots
            for name, target in zip(totals, targets, strict=True):
                totals[name] += label_counts(target, mask, classes.background, classes.ignore_index)
    print(f"{args.checkpoint} on {images} {args.split} images (whole images)")
    print(f"expansion scores: objects {method.score.objects:.3f}, background {method.score.background:.3f}")
    print("| | " + " | ".join(SCORES) + " |")
    print("|---" * (len(SCORES) + 1) + "|")
    for name, counts in totals.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in label_scores(counts)) + " |")


if __name__ == "__main__":
    main()
