"""``weakseg report RUN_DIR``: one self-contained HTML page per run, written at the end of ``train`` and ``eval``.

The page holds the metrics table (and the pseudo-labels' seed scores of multi-stage runs), per-class IoU bars, the
confusion matrix, the training curves of every training stage, and a gallery of training images: the image, its
weak labels, its pseudo-labels (where the run made some), the final model's prediction and the ground truth. Every
picture is embedded as a data URI: the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from weakseg.config import from_dict, upgrade_recipe_dict
from weakseg.data.classes import IGNORE_INDEX, ClassSet
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.formats import atomic_write, read_label_map
from weakseg.data.sample import Sample
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.engine.evaluator import predict_with_config
from weakseg.engine.pipeline import final_checkpoint, label_map_folders
from weakseg.engine.predict import overlay
from weakseg.engine.recipe import Recipe
from weakseg.engine.run_log import CSV_NAME, read_metrics_csv
from weakseg.errors import DataError
from weakseg.methods import build_method

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPORT_NAME = "report.html"
THUMB_WIDTH = 220


def training_stages(run_dir: Path) -> list[Path]:
    """The folders of the run's training stages, in the order they ran."""
    folders = [run_dir] if (run_dir / "recipe.yaml").is_file() else []
    folders += [p for p in run_dir.iterdir() if p.is_dir() and (p / "recipe.yaml").is_file()]
    return sorted(folders, key=lambda p: (p / "recipe.yaml").stat().st_mtime)


def write_run_report(
    run_dir: str | Path,
    *,
    metrics: dict | None = None,
    out: str | Path | None = None,
    gallery: int = 6,
    title: str | None = None,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write the run's HTML report (default ``RUN_DIR/report.html``) and return its path.

    ``metrics`` defaults to the run's ``metrics.json`` (the final model on the val split); ``weakseg eval`` passes
    its own. ``gallery`` is the number of training images shown, predicted by ``checkpoint`` (default: the run's
    final model).
    """
    run_dir = Path(run_dir)
    if metrics is None:
        summary = run_dir / "metrics.json"
        if not summary.is_file():
            raise DataError(run_dir, "no metrics.json: not a finished run folder")
        metrics = json.loads(summary.read_text())
    stages = training_stages(run_dir)
    if not stages:
        raise DataError(run_dir, "no recipe.yaml here or in a stage folder: not a weakseg run folder")
    checkpoint = Path(checkpoint) if checkpoint is not None else final_checkpoint(run_dir)
    model, final_recipe, state = load_model_from_checkpoint(checkpoint, torch.device("cpu"))
    weak_recipe = from_dict(Recipe, upgrade_recipe_dict(yaml.safe_load((stages[0] / "recipe.yaml").read_text())))
    class_set = ClassSet.from_dict(state["class_set"])
    sections = [
        _metrics_section(metrics, class_set),
        _curves_section(stages),
        _gallery_section(run_dir, model, final_recipe, weak_recipe, class_set, gallery),
    ]
    heading = title or f"{run_dir.name}: {weak_recipe.method} / {weak_recipe.supervision}"
    page = _page(heading, weak_recipe, state["step"], sections)
    path = Path(out) if out is not None else run_dir / REPORT_NAME
    atomic_write(path, lambda f: f.write(page.encode()))
    return path


# ------------------------------------------------------------------------------------------------ sections
def _metrics_section(metrics: dict, class_set: ClassSet) -> str:
    names = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "mean_accuracy": "mean accuracy",
             "boundary_f": "boundary F", "jf": "J&F", "train_images_per_s": "training images/s",
             "infer_images_per_s": "inference images/s", "num_images": "images scored"}  # fmt: skip
    rows = [(label, metrics[key]) for key, label in names.items() if metrics.get(key) is not None]
    parts = ["<h2>Metrics</h2>", _table(["metric", "value"], [(name, _fmt(v)) for name, v in rows])]
    pseudo = metrics.get("pseudo_labels")
    if pseudo and "seed" in pseudo:
        names = [n for n in ("baseline", "seed", "refined") if n in pseudo]
        table = [(n, _fmt(pseudo[n]["miou"]), _fmt(pseudo[n]["boundary_f"])) for n in names]
        table.append(("pseudo-labels (labelled pixels)", _fmt(pseudo["pseudo"]["miou"]), "—"))
        parts += [
            f"<h3>Pseudo-labels of the training images ({100 * pseudo['coverage']:.1f}% of the pixels labelled)</h3>",
            _table(["maps", "mIoU", "boundary F"], table),
        ]
    if "per_class_iou" in metrics:
        parts += ["<h3>Per-class IoU</h3>", _img(_iou_bars(metrics["per_class_iou"], class_set), "per-class IoU")]
    if "confusion" in metrics:
        parts += ["<h3>Confusion matrix (rows: ground truth, normalised)</h3>",
                  _img(_confusion_image(np.asarray(metrics["confusion"]), class_set), "confusion matrix")]  # fmt: skip
    return "\n".join(parts)


def _curves_section(stages: list[Path]) -> str:
    parts = ["<h2>Training curves</h2>"]
    for folder in stages:
        rows = read_metrics_csv(folder / CSV_NAME) if (folder / CSV_NAME).is_file() else []
        if not rows:
            continue
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            series.setdefault(r["metric"], []).append((r["step"], r["value"]))
        parts += [f"<h3>{html.escape(folder.name)}</h3>", _img(_curves_image(series), f"curves of {folder.name}")]
    return "\n".join(parts) if len(parts) > 1 else ""


def _gallery_section(
    run_dir: Path, model: torch.nn.Module, final: Recipe, weak: Recipe, class_set: ClassSet, count: int
) -> str:
    if count <= 0:
        return ""
    dataset = _gallery_dataset(weak, class_set)
    folders = [(folder, title) for folder, title in label_map_folders(run_dir) if folder.is_dir()]
    shows_weak = weak.supervision != "full"
    columns = ["image", *([f"weak labels ({weak.supervision})"] if shows_weak else [])]
    columns += [*(label for _, label in folders), "prediction"]
    has_masks = "mask" in dataset.kinds
    columns += ["ground truth"] if has_masks else []
    mean, std = model.mean_std
    rows = []
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        image = torch.from_numpy(sample.image).permute(2, 0, 1)[None]
        with torch.no_grad():
            pred = predict_with_config(lambda t: model(t)["logits"], image, mean, std, final.eval)[0].numpy()
        cells = [_jpeg(sample.image), *([_jpeg(_weak_label_image(sample, class_set))] if shows_weak else [])]
        for folder, _ in folders:
            path = folder / f"{sample.image_id}.png"
            label = read_label_map(path) if path.is_file() else None
            cells.append(_jpeg(overlay(sample.image, label, class_set)) if label is not None else "—")
        cells.append(_jpeg(overlay(sample.image, pred.astype(np.int64), class_set)))
        if has_masks:
            cells.append(_jpeg(overlay(sample.image, sample.maps["mask"].astype(np.int64), class_set)))
        rows.append((html.escape(sample.image_id), *cells))
    legend = " ".join(
        f'<span class="swatch" style="background:rgb{tuple(c)}"></span>{html.escape(n)}'
        for n, c in zip(class_set.names, class_set.palette, strict=True)
    )
    return "\n".join([f"<h2>Training images (split {html.escape(weak.data.train_split)})</h2>",
                      f"<p class=legend>{legend}</p>", _table(["id", *columns], rows, escape=False)])  # fmt: skip


def _gallery_dataset(recipe: Recipe, class_set: ClassSet) -> SegmentationDataset:
    method = build_method(recipe.method, recipe.method_args, recipe.supervision, class_set)
    kinds = tuple(dict.fromkeys((*method.label_kinds(), "mask")))
    try:
        return SegmentationDataset(recipe.data, recipe.data.train_split, kinds=kinds, class_set=class_set)
    except DataError:  # no usable masks: show the weak labels only
        weak = tuple(k for k in kinds if k != "mask")
        return SegmentationDataset(recipe.data, recipe.data.train_split, kinds=weak, class_set=class_set)


# ------------------------------------------------------------------------------------------------ pictures
def _weak_label_image(sample: Sample, class_set: ClassSet) -> np.ndarray:
    """The image, dimmed, with its scribbles, boxes and points drawn in their class colours and its tags written."""
    palette = class_set.palette_array()
    base = (sample.image.astype(np.float32) * 0.55).astype(np.uint8)
    if "scribble" in sample.maps:
        scribble = sample.maps["scribble"]
        drawn = scribble != IGNORE_INDEX
        base[drawn] = palette[scribble[drawn]]
    canvas = Image.fromarray(base)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(sample.size) / 150))
    for x0, y0, x1, y1, c in np.asarray(sample.boxes if sample.boxes is not None else np.zeros((0, 5))):
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=tuple(palette[int(c)]), width=width)
    for x, y, c in np.asarray(sample.points if sample.points is not None else np.zeros((0, 3))):
        r = 2 * width
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(palette[int(c)]), outline=(255, 255, 255))
    if sample.tags is not None:
        draw.text((4, 4), ", ".join(class_set.names[int(c)] for c in sample.tags), fill=(255, 255, 255))
    return np.asarray(canvas)


def _iou_bars(per_class: list[float], class_set: ClassSet) -> bytes:
    values = [0.0 if v is None or np.isnan(v) else v for v in per_class]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(values) + 0.8))
    ax.barh(range(len(values)), values, color=[np.asarray(c) / 255 for c in class_set.palette])
    ax.set_yticks(range(len(values)), class_set.names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU (classes never seen or predicted: 0)")
    return _figure_png(fig)


def _confusion_image(confusion: np.ndarray, class_set: ClassSet) -> bytes:
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = 0.3 * len(class_set.names) + 1.5
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    ticks = range(len(class_set.names))
    ax.set_xticks(ticks, class_set.names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_set.names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    return _figure_png(fig)


def _curves_image(series: dict[str, list[tuple[int, float]]]) -> bytes:
    names = [n for n in series if n != "images_per_s"]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = zip(*series[name], strict=True)
        ax.plot(steps, values, marker="o" if len(steps) < 3 else None, markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    return _figure_png(fig)


def _figure_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ HTML
def _jpeg(image: np.ndarray) -> str:
    picture = Image.fromarray(image)
    if picture.width != THUMB_WIDTH:  # small images are enlarged without smoothing, so labels stay crisp
        smooth = Image.Resampling.BILINEAR if picture.width > THUMB_WIDTH else Image.Resampling.NEAREST
        size = (THUMB_WIDTH, max(1, round(picture.height * THUMB_WIDTH / picture.width)))
        picture = picture.resize(size, smooth)
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=85)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}" alt="">'


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(alt)}">'


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "—" if np.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[tuple], *, escape: bool = True) -> str:
    cell = html.escape if escape else str
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.2em 0 0.8em; vertical-align: middle; }
.meta { color: #555; }
"""
# Marks the body with how many pictures decoded, so that a headless browser can check the page.
CHECK_IMAGES = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((im) => im.complete && im.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = String(loaded);
  document.body.dataset.imagesBroken = String(images.length - loaded);
});
"""


def _page(title: str, recipe: Recipe, step: int, sections: list[str]) -> str:
    meta = (f"method <b>{html.escape(recipe.method)}</b>, supervision <b>{html.escape(recipe.supervision)}</b>, "
            f"data <code>{html.escape(recipe.data.root)}</code>, final model at step {step}")  # fmt: skip
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n<p class=meta>{meta}</p>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<script>{CHECK_IMAGES}</script>\n</body></html>\n"
    )
