"""``weakseg bench``: run the planned rows that are missing or stale, each in its own process, then refresh the
ratios and ``docs/benchmarks.md``.

Each row trains every stage of its method, evaluates on the dataset's val split and writes
``<results>/<profile>/<dataset>/<row>.json``. Its run folder keeps a marker (:data:`ROW_MARKER`) of the provenance its
checkpoints were trained under, so that an interrupted row continues from them and a changed one starts over. The
child process runs ``python -m weakseg.bench REQUEST`` (a JSON request naming the protocol and the row).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from weakseg.bench.docs import write_benchmark_docs
from weakseg.bench.labels import describe_labels, ensure_labels
from weakseg.bench.protocol import Protocol
from weakseg.bench.rows import Provenance, Row, method_args_with_defaults, plan_rows
from weakseg.config import from_dict, to_dict
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.formats import write_json
from weakseg.engine.pseudo_labels import STAGES
from weakseg.errors import WeakSegError
from weakseg.methods import Fit
from weakseg.methods.stages import ModelStage
from weakseg.pseudo.cam import PseudoLabelConfig

if TYPE_CHECKING:
    from weakseg.engine.pipeline import Pipeline

ROW_MARKER = "bench-row.json"  # in a run folder: the provenance its checkpoints were trained under


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} × {cpu}{gpu}, torch {torch.__version__}"


def claim_run_folder(folder: Path, provenance: Provenance) -> bool:
    """Mark ``folder`` as trained under ``provenance``; True when its checkpoints were already trained under it (the
    marker there was made with it), so that an interrupted run there may continue from them."""
    marker = folder / ROW_MARKER
    same = marker.is_file() and provenance.made(json.loads(marker.read_text()))
    write_json(marker, provenance.as_record())
    return same


def run_row(row: Row, cache: Path, commit: str, *, resume: bool = False) -> dict:
    """Train and evaluate one row (every stage of its method) in this process; return its JSON record.

    With ``resume``, a row interrupted earlier under the same provenance continues from its stages' checkpoints
    (bit for bit the same training on CPU); its record lists the stages it reused as ``resumed_stages``, and its
    ``wall_s`` and images/s cover this process only."""
    from weakseg.engine.device import select_device
    from weakseg.engine.pipeline import Pipeline

    start = time.perf_counter()
    recipe = row.recipe(cache)
    if row.supervision == "full":
        train = SegmentationDataset(recipe.data, recipe.data.train_split, kinds=("mask",), required=("mask",))
        protocol, fraction = "full masks", train.labelled_pixel_fraction("mask")
    else:
        summary = ensure_labels(row.dataset, row.data_root, row.supervision, cache)
        protocol, fraction = describe_labels(row.dataset, row.supervision, summary)
    pipeline = Pipeline(recipe, progress=False)
    provenance = row.provenance(cache)
    resume = claim_run_folder(Path(recipe.output_dir), provenance) and resume
    result = pipeline.run(resume=resume)
    m = result.metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    final = pipeline.stage_recipe(pipeline.names[-1])
    record = {
        "dataset": row.dataset.name,
        "method": row.method,
        "supervision": row.supervision,
        "miou": m["miou"],
        "per_class_iou": dict(zip(m["class_names"], m["per_class_iou"], strict=True)),
        "pixel_accuracy": m["pixel_accuracy"],
        "boundary_f": m["boundary_f"],
        "jf": m["jf"],
        "ratio_to_full": None,
        "train_images_per_s": result.train_images_per_s,
        "infer_images_per_s": m["infer_images_per_s"],
        "peak_rss_mb": peak,
        "wall_s": time.perf_counter() - start,
        "train_steps": final.train.steps,
        "device": str(select_device(recipe.train.device)),
        "hardware": hardware(),
        "backbone": f"{recipe.model.backbone} ({result.weights_source})",
        "head": f"{recipe.model.head}, output stride {recipe.model.output_stride}, {recipe.model.head_channels} ch",
        "schedule": f"{final.train.steps} steps × batch {final.train.batch_size}, crop {final.augment.crop_size}, "
        f"{final.train.optimizer} lr {final.train.lr} {final.train.schedule}",
        "eval": f"{row.dataset.name} val ({m['num_images']} images), scales {list(recipe.eval.scales)}, "
        f"flip {recipe.eval.flip}",
        "labels_protocol": protocol,
        "labelled_pixel_fraction": fraction,
        "seed": recipe.train.seed,
        "git_commit": commit,
        "command": command_for(row),
        **provenance.as_record(),
    }
    if result.resumed_stages:
        record["resumed_stages"] = result.resumed_stages
    if pipeline.multi_stage:
        first = pipeline.names[0]
        record["stages"] = {"wall_s": result.stage_wall_s}
        if isinstance(pipeline.plan[0], ModelStage):  # a first stage that labels (a box prior) has no schedule
            record["stages"][first] = describe_stage(pipeline, first)
        if "pseudo_labels" in m:  # a CAM pipeline's seeds
            record["pseudo_labels"] = pseudo_summary(m["pseudo_labels"], recipe.pseudo)
        if "relabel" in m and "miou" in m["relabel"]:  # a relabelling stage's labels of the training images
            record["relabel"] = {k: m["relabel"][k] for k in ("miou", "boundary_f", "jf")}
    return record


def describe_stage(pipeline: Pipeline, name: str) -> str:
    """A model stage as a row's record describes it: its schedule, or what a fitted head was fitted on."""
    recipe = pipeline.stage_recipe(name)
    if isinstance(pipeline.stage(name), Fit):
        args = method_args_with_defaults(recipe.method, recipe.method_args)
        return f"{recipe.method}: head fitted on frozen features, " + ", ".join(f"{k} {v}" for k, v in args.items())
    return (
        f"{recipe.method}: {recipe.train.steps} steps × batch {recipe.train.batch_size}, "
        f"crop {recipe.augment.crop_size}, scale {list(recipe.augment.scale_range)}"
    )


def pseudo_summary(metrics: dict, cfg: PseudoLabelConfig) -> dict:
    """The seed-quality figures a bench row keeps: mIoU and boundary F of each labelling on the train split, the
    seed mIoU at every background threshold, and the classifier's mAP on train and val."""
    out = {name: {"miou": metrics[name]["miou"], "boundary_f": metrics[name]["boundary_f"]} for name in STAGES}
    out["pseudo"] = {"miou": metrics["pseudo"]["miou"], "coverage": metrics["coverage"]}
    out["images"] = metrics["images"]
    out["config"] = to_dict(cfg)
    if "seed_thresholds" in metrics:
        out["seed_thresholds"] = metrics["seed_thresholds"]
    if "classifier" in metrics:
        out["classifier"] = {split: {"map": m["map"]} for split, m in metrics["classifier"].items()}
    return out


def command_for(row: Row) -> str:
    return (
        f"weakseg bench --profile {row.profile} --datasets {row.dataset.name} --methods {row.method} "
        f"--supervisions {row.supervision}" + (f" --seeds {row.seed}" if row.seed else "")
    )


def update_ratios(results: Path, profile: str) -> None:
    """Set every row's ``ratio_to_full`` from the ``full`` row of its dataset and profile."""
    for folder in sorted((results / profile).glob("*")):
        full_path = folder / "full-full.json"
        full = json.loads(full_path.read_text())["miou"] if full_path.is_file() else None
        for path in sorted(folder.glob("*.json")):
            record = json.loads(path.read_text())
            ratio = record["miou"] / full if full else None
            if record.get("ratio_to_full") != ratio:
                record["ratio_to_full"] = ratio
                write_json(path, record)


def bench(
    protocol: Protocol,
    profile: str,
    datasets: list[str],
    methods: list[str],
    supervisions: list[str] | None,
    *,
    data_root: Path,
    results: Path,
    cache: Path,
    docs: Path,
    force: bool = False,
    seeds: list[int] | None = None,
) -> list[Path]:
    """Run the rows that are missing or stale (each in a child process), then refresh ratios and docs. A row that was
    interrupted resumes from its checkpoints unless ``force``."""
    rows = plan_rows(protocol, profile, datasets, methods, supervisions, data_root, results, seeds)
    commit = git_commit()
    done = []
    for row in rows:
        if not force and row.is_current(cache):
            print(f"{row.dataset.name} {row.name}: up to date ({row.json_path})")
            continue
        print(f"{row.dataset.name} {row.name}: running ({profile} profile)", flush=True)
        request = {
            "protocol": to_dict(protocol),
            "row": {
                "profile": profile,
                "dataset": row.dataset.name,
                "method": row.method,
                "supervision": row.supervision,
                "seed": row.seed,
                "data_root": str(data_root),
                "results": str(results),
            },
            "cache": str(cache),
            "commit": commit,
            "resume": not force,
        }
        if run_child_process([sys.executable, "-m", "weakseg.bench", json.dumps(request)]) != 0:
            raise WeakSegError(f"benchmark row {row.dataset.name} {row.name} failed (its error is printed above)")
        record = json.loads(row.json_path.read_text())
        print(f"  mIoU {record['miou']:.4f}, boundary F {record['boundary_f']:.4f}, {record['wall_s']:.0f} s")
        done.append(row.json_path)
    update_ratios(results, profile)
    write_benchmark_docs(results, docs, protocol)
    return done


def run_child_process(cmd: list[str]) -> int:
    """Run ``cmd`` and return its exit code; if this process is interrupted (Ctrl-C) or terminated (SIGTERM, as job
    schedulers and ``timeout`` send), the child is stopped too rather than left training on its own."""
    child = subprocess.Popen(cmd)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return child.wait()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
    """The child process of :func:`bench`: run the requested row and write its JSON."""
    request = json.loads(argv[0])
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    protocol = from_dict(Protocol, request["protocol"])
    spec = request["row"]
    row = Row(
        protocol,
        spec["profile"],
        protocol.dataset(spec["dataset"]),
        spec["method"],
        spec["supervision"],
        Path(spec["data_root"]),
        Path(spec["results"]),
        spec["seed"],
    )
    record = run_row(row, Path(request["cache"]), request["commit"], resume=request["resume"])
    write_json(row.json_path, record)
