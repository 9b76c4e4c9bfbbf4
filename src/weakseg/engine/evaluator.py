"""Evaluation over a dataset split: predictions, metrics (mIoU, boundary F, J&F) and throughput."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from weakseg import distributed
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.formats import write_label_png
from weakseg.data.loader import collate, sample_to_tensors
from weakseg.engine.device import normalize
from weakseg.engine.inference import predict_probs
from weakseg.engine.metrics import SegmentationMetrics
from weakseg.engine.recipe import EvalConfig
from weakseg.pseudo import DenseCRF


class _EvalView(torch.utils.data.Dataset):
    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return sample_to_tensors(self.dataset[i], self.dataset.class_set.num_classes)


def predict_with_config(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    cfg: EvalConfig,
) -> torch.Tensor:
    """B×H×W labels of uint8 B×3×H×W ``images`` with ``cfg``'s scales, flip and window, then its dense CRF if set."""
    probs = predict_probs(logits_fn, normalize(images, mean, std), scales=cfg.scales, flip=cfg.flip, window=cfg.window)
    if cfg.crf:
        probs = DenseCRF(iterations=cfg.crf_iterations)(probs, images)
    return probs.argmax(1)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    cfg: EvalConfig,
    device: torch.device,
    *,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_workers: int = 2,
    progress: bool = True,
    prediction_dir: Path | None = None,
) -> dict:
    """Predict every image of ``dataset`` (one at a time, any size) and score against its masks.

    Under torchrun each process predicts its share of the images (:func:`distributed.shard`) and the scores are
    merged; every process returns the same metrics.
    """
    class_set = dataset.class_set
    metrics = SegmentationMetrics(class_set.num_classes, class_set.ignore_index, cfg.boundary_tolerance)
    mean, std = model.mean_std
    logits_fn = logits_fn or (lambda x: model(x)["logits"])
    was_training = model.training
    model.eval()
    count = len(dataset) if cfg.max_images is None else min(cfg.max_images, len(dataset))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(_EvalView(dataset), distributed.shard(count)),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=collate,
    )
    model_time = 0.0
    palette = class_set.palette_array()
    progress = progress and distributed.is_main()
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        start = time.perf_counter()
        pred = predict_with_config(logits_fn, batch["image"].to(device), mean, std, cfg).cpu()
        model_time += time.perf_counter() - start
        metrics.update(pred, batch["mask"])
        if prediction_dir is not None:
            for image_id, p in zip(batch["image_id"], pred, strict=True):
                write_label_png(prediction_dir / f"{image_id}.png", p.numpy().astype("uint8"), palette)
    model.train(was_training)
    metrics = distributed.merged(metrics)
    model_time = max(distributed.all_gather_objects(model_time))  # the processes predict side by side
    result = metrics.compute()
    result["num_images"] = count
    result["infer_images_per_s"] = count / model_time if model_time > 0 else float("nan")
    result["class_names"] = list(class_set.names)
    return result
