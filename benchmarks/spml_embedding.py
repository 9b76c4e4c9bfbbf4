"""How spread an SPML model's embedding is, and what its classifier predicts, on the images of a split.

    python -m benchmarks.spml_embedding RUN/last.pt [--data-root ../shared/data] [--split train] [--images 40]
                                        [--labels RUN/../pseudo/labels]

Per image, at the model's input size: the mean cosine between each pixel's embedding and the image's mean embedding
(1 = every pixel embedded alike, a collapsed embedding), and the fraction of pixels the classifier (without the
walk) labels foreground; with ``--labels`` (a folder of training label maps, e.g. a CAM pipeline's
pseudo-labels), the fraction of their labelled pixels that are foreground. Prints the medians over the images. The
run's dataset is read from its folder under ``--data-root``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import entry_point, rerooted
from weakseg.data.dataset import SegmentationDataset
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.engine.device import normalize
from weakseg.methods.spml import EMBEDDING


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("spml_embedding", __doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--labels", type=Path, default=None, help="folder of <image id>.png training labels")
    args = parser.parse_args(argv)

    no_walk = ["method_args.random_walk=false"]
    model, recipe, _ = load_model_from_checkpoint(args.checkpoint, torch.device("cpu"), no_walk)
    recipe.data.root = rerooted(recipe.data.root, args.data_root)
    dataset = SegmentationDataset(recipe.data, args.split, kinds=())  # images only
    background = dataset.class_set.background
    if background is None:
        parser.error(f"{args.checkpoint}: its classes have no background, so there is no foreground share to measure")
    spread, foreground, label_foreground = [], [], []
    with torch.no_grad():
        for index in range(min(args.images, len(dataset))):
            sample = dataset[index]
            image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1)[None]
            out = model(normalize(image, *model.mean_std))
            embedding = out[EMBEDDING][0].flatten(1)  # D×N, unit columns
            centre = F.normalize(embedding.mean(1), dim=0)
            spread.append((centre @ embedding).mean().item())
            foreground.append((out["logits"][0].argmax(0) != background).float().mean().item())
            if args.labels is not None:
                labels = np.asarray(Image.open(args.labels / f"{sample.image_id}.png"))
                labelled = labels != dataset.class_set.ignore_index
                label_foreground.append(float((labels[labelled] != background).mean()) if labelled.any() else 0.0)
    print(f"{args.checkpoint} on {len(spread)} {args.split} images (medians)")
    print(f"  cosine of a pixel's embedding to its image's mean embedding: {statistics.median(spread):.3f}")
    print(f"  pixels the classifier labels foreground (no walk): {statistics.median(foreground):.3f}")
    if label_foreground:
        print(f"  foreground share of the labelled pixels of {args.labels}: {statistics.median(label_foreground):.3f}")


if __name__ == "__main__":
    main()
