"""``weakseg predict``: palette PNGs and overlays for a file, a folder or a list of images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from weakseg.data.classes import ClassSet
from weakseg.data.dataset import IMAGE_SUFFIXES
from weakseg.data.formats import read_image, write_label_png
from weakseg.data.sample import check_image_id
from weakseg.engine.evaluator import predict_with_config
from weakseg.engine.recipe import EvalConfig
from weakseg.errors import DataError


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files from paths that are images, folders of images, or ``.txt`` lists of image paths."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.suffix == ".txt" and item.is_file():
            out += [p if p.is_absolute() else item.parent / p for p in map(Path, _list_lines(item))]
        elif item.is_file():
            out.append(item)
        else:
            raise DataError(item, "no such image, folder or list")
    if not out:
        raise DataError(None, "no images to predict")
    return out


def _list_lines(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def overlay(image: np.ndarray, label: np.ndarray, class_set: ClassSet, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the palette colours of ``label`` (ignore pixels left as they are)."""
    colours = class_set.palette_array()[label].astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = label == class_set.ignore_index
    out[keep] = image[keep]
    return out.round().astype(np.uint8)


@torch.no_grad()
def predict_files(
    model: torch.nn.Module,
    paths: list[Path],
    out_dir: Path,
    class_set: ClassSet,
    cfg: EvalConfig,
    device: torch.device,
    progress: bool = True,
) -> list[Path]:
    """Write ``<stem>.png`` (palette label map) and ``<stem>_overlay.jpg`` for every image; return the PNGs."""
    mean, std = model.mean_std
    model.eval()
    written = []
    for path in tqdm(paths, desc="predict", disable=not progress, dynamic_ncols=True):
        stem = check_image_id(path.stem, path)
        image = read_image(path)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
        label = predict_with_config(lambda t: model(t)["logits"], x, mean, std, cfg)
        label = label[0].cpu().numpy().astype(np.uint8)
        write_label_png(out_dir / f"{stem}.png", label, class_set.palette_array())
        Image.fromarray(overlay(image, label, class_set)).save(out_dir / f"{stem}_overlay.jpg", quality=90)
        written.append(out_dir / f"{stem}.png")
    return written
