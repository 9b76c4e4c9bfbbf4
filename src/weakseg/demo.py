"""``weakseg demo``: generate a dataset, simulate weak labels, train full and pCE (points, scribbles), report (a table
and an HTML page per run)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from weakseg.data.dataset import SegmentationDataset, resolve_class_set, voc_layout
from weakseg.data.formats import write_json
from weakseg.data.simulate import LabelProtocol, derive_labels
from weakseg.data.synthetic import generate_shapes_dataset
from weakseg.engine.device import select_device
from weakseg.engine.metrics import format_table
from weakseg.engine.predict import predict_files
from weakseg.engine.recipe import load_recipe
from weakseg.engine.run_report import write_run_report
from weakseg.engine.trainer import Trainer

log = logging.getLogger(__name__)

DEMO_RUNS = ("full", "pce-points", "pce-scribbles")


def run_demo(out: Path, *, steps: int | None = None, progress: bool = True, num_train: int = 48) -> list[dict]:
    """Run the whole demo into ``out``; returns the results table's rows."""
    start = time.perf_counter()
    out = out.resolve()
    data_root = generate_shapes_dataset(out / "data", num_train=num_train, num_val=16, seed=0)
    labels = out / "data" / "labels"
    data = voc_layout(data_root)
    class_set = resolve_class_set(data)
    train = SegmentationDataset(data, "train", kinds=("mask",), class_set=class_set)
    summary = derive_labels(
        train.masks(),
        class_set,
        labels,
        ("tags", "boxes", "points", "scribbles"),
        LabelProtocol(seed=0),
        progress=False,
    )
    density = {
        "full": train.labelled_pixel_fraction("mask"),
        "points": summary["points"]["labelled_pixel_fraction"],
        "scribbles": summary["scribbles"]["labelled_pixel_fraction"],
    }
    rows = []
    for recipe_name in DEMO_RUNS:
        overrides = [
            f"data.root={data_root}",
            f"data.labels={labels}",
            f"output_dir={out / 'runs' / recipe_name}",
        ] + ([f"train.steps={steps}"] if steps else [])
        recipe = load_recipe([recipe_name, "demo"], overrides)
        supervision = recipe.supervision
        log.info("demo: training %s on %s", recipe.method, supervision)
        trainer = Trainer(recipe, progress=progress)
        result = trainer.fit()
        write_run_report(trainer.out)
        rows.append(
            {
                "method": recipe.method,
                "supervision": supervision,
                "labelled_%": 100 * density[supervision],
                "miou": result.metrics["miou"],
                "boundary_f": result.metrics["boundary_f"],
                "jf": result.metrics["jf"],
                "train_s": result.wall_s,
            }
        )
        if recipe_name == DEMO_RUNS[-1]:
            val_images = [Path(trainer.val_set.records[i].image_path) for i in range(len(trainer.val_set))]
            predict_files(
                trainer.model,
                val_images,
                out / "predictions" / recipe_name,
                class_set,
                recipe.eval,
                select_device(recipe.train.device),
                progress=False,
            )
    full = rows[0]["miou"]
    for row in rows:
        row["ratio_to_full"] = row["miou"] / full if full > 0 else float("nan")
    columns = ["method", "supervision", "labelled_%", "miou", "ratio_to_full", "boundary_f", "jf", "train_s"]
    table = format_table(rows, columns)
    total = time.perf_counter() - start
    (out / "results.txt").write_text(table + f"\ntotal time {total:.0f} s\n")
    write_json(out / "results.json", {"rows": rows, "total_s": total})
    print(table)
    print(
        f"demo finished in {total:.0f} s; predictions and overlays in {out / 'predictions'}, "
        f"a report per run in {out / 'runs'}/*/report.html"
    )
    return rows
