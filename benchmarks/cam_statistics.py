"""How a CAM learner's maps sit on the objects: peak placement, activation inside and outside, seed extent.

    python -m benchmarks.cam_statistics cam-tags seam-tags ppc-tags [--images 40] [--threshold 0.15]
                                        [--data-root ../shared/data] [--cache benchmarks/cache]

For each named standard-profile voc454 bench row, loads its cached CAM checkpoint (``<cache>/runs/standard/voc454/
<row>/cam/last.pt``) and, on ``--images`` train images spread evenly over the split (single scale, no flip),
measures for every tagged foreground class ``c`` of each image, on the max-normalised CAM ``r_c`` (HFPL eq. 4):

- how often the peak of ``r_c`` falls inside the ground-truth mask of ``c``, and how often within 16 px of the border;
- the mean of ``r_c`` inside and outside that mask;
- the median over classes of (area where ``r_c > threshold``) / (object area): below 1, seeds at that threshold
  are smaller than the objects.
"""

from __future__ import annotations

import functools
import statistics
from pathlib import Path

import torch

from benchmarks.common import entry_point, rerooted
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.engine.device import normalize
from weakseg.engine.pipeline import pseudo_label_dataset
from weakseg.engine.recipe import load_recipe
from weakseg.pseudo.cam import extract_cams, max_normalise

BORDER = 16  # px


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("cam_statistics", __doc__)
    parser.add_argument("rows", nargs="+", help="bench row names, e.g. cam-tags seam-tags-seed1")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.15)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"), help="the bench's run folders")
    args = parser.parse_args(argv)

    print(f"voc454 train, {args.images} images, single-scale CAMs; extent at r > {args.threshold}")
    print("| row | peak in object | peak at border | mean r inside | mean r outside | extent / object (median) |")
    print("|---|---|---|---|---|---|")
    for name in args.rows:
        stage = args.cache / "runs" / "standard" / "voc454" / name / "cam"
        model = load_model_from_checkpoint(stage / "last.pt", torch.device("cpu"))[0].eval()
        recipe = load_recipe(stage / "recipe.yaml")
        recipe.data.root = rerooted(recipe.data.root, args.data_root)
        dataset = pseudo_label_dataset(recipe, recipe.data.train_split)
        step = max(1, len(dataset) // args.images)
        hits = border = 0
        inside, outside, extent = [], [], []
        with torch.no_grad():
            for i in range(0, min(len(dataset), step * args.images), step):
                sample = dataset[i]
                x = normalize(torch.from_numpy(sample.image).permute(2, 0, 1)[None], *model.mean_std)
                cams = extract_cams(functools.partial(_cam, model), x)[0]
                mask = torch.from_numpy(sample.maps["mask"].astype("int64"))
                known = mask != dataset.class_set.ignore_index
                for c in sorted({int(t) for t in sample.tags} - {dataset.class_set.background}):
                    r, obj = max_normalise(cams[c]), mask == c
                    y, x_ = divmod(int(r.argmax()), r.shape[1])
                    hits += bool(obj[y, x_])
                    border += min(y, x_, r.shape[0] - 1 - y, r.shape[1] - 1 - x_) < BORDER
                    inside.append(float(r[obj].mean()) if obj.any() else 0.0)
                    outside.append(float(r[~obj & known].mean()))
                    extent.append(float((r > args.threshold).sum()) / max(int(obj.sum()), 1))
        n = len(inside)
        print(f"| {name} | {hits}/{n} | {border}/{n} | {statistics.mean(inside):.3f} | {statistics.mean(outside):.3f} "
              f"| {statistics.median(extent):.2f} |")  # fmt: skip


def _cam(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images, decode=False)["cam"]


if __name__ == "__main__":
    main()
