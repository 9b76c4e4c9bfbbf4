"""The ``weakseg`` command: train | eval | report | export | predict | derive-labels | bench | demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from weakseg import __version__
from weakseg.errors import ConfigError, WeakSegError, user_message

log = logging.getLogger("weakseg")
DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")  # section.key, not a recipe


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


def cmd_train(args: argparse.Namespace) -> int:
    from weakseg.engine.pipeline import Pipeline
    from weakseg.engine.recipe import load_recipe

    recipes = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    for item in recipes:
        if DOTTED_KEY.fullmatch(item) and not item.endswith((".yaml", ".yml")) and not Path(item).exists():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
    recipe = load_recipe(recipes, overrides)
    with distributed_run(recipe.train.device):
        result = Pipeline(recipe, progress=not args.quiet).run(resume=args.resume, start=args.stage, until=args.until)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    _print_pseudo_metrics(result.metrics.get("pseudo_labels"))
    if not result.final_checkpoint.is_file():  # --until stopped before the last stage
        log.info("stopped after stage %s; outputs in %s", args.until, result.output_dir)
        return 0
    _print_metrics(result.metrics, f"{recipe.method} / {recipe.supervision}")
    if not args.no_report:
        from weakseg.engine.run_report import write_run_report

        log.info("report: %s", write_run_report(result.output_dir))
    log.info(
        "checkpoints and metrics in %s (final model %s, %.1f images/s in the last training stage)",
        result.output_dir,
        result.final_checkpoint,
        result.train_images_per_s,
    )
    return 0


@contextlib.contextmanager
def distributed_run(device: str) -> Iterator[None]:
    """Under torchrun: join the process group for the command, and leave it at the end."""
    from weakseg import distributed

    distributed.init_distributed(device)
    try:
        yield
    finally:
        distributed.shutdown()


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a checkpoint; under torchrun the images are shared among the processes and rank 0 reports."""
    with distributed_run(args.device):
        return _evaluate_checkpoint(args)


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    from weakseg import distributed
    from weakseg.data.formats import write_json
    from weakseg.engine.device import select_device
    from weakseg.engine.pipeline import evaluate_run

    path = Path(args.checkpoint)
    result = evaluate_run(
        path,
        select_device(args.device),
        split=args.split,
        overrides=args.overrides,
        prediction_dir=Path(args.save_predictions) if args.save_predictions else None,
        progress=not args.quiet,
    )
    checkpoint, split, metrics = result.checkpoint, result.split, result.metrics
    if not distributed.is_main():
        return 0
    if result.output == "cam":
        _print_pseudo_metrics(metrics, f"{checkpoint}: pseudo-labels on {split}")
    else:
        _print_pseudo_metrics(metrics.get("pseudo_labels"))
        _print_metrics(metrics, f"{checkpoint} on {split}")
        if not args.no_report:
            from weakseg.engine.run_report import write_run_report

            run_dir = path if path.is_dir() else checkpoint.parent
            page = write_run_report(run_dir, metrics=metrics, out=run_dir / f"report-{split}.html",
                                    title=f"{checkpoint} on {split}", checkpoint=checkpoint)  # fmt: skip
            log.info("report: %s", page)
    if args.out:
        write_json(args.out, metrics)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from weakseg.engine.export import export_checkpoint, sidecar_path
    from weakseg.engine.pipeline import run_checkpoint

    checkpoint = run_checkpoint(Path(args.checkpoint))
    out = export_checkpoint(checkpoint, Path(args.out), args.format, opset=args.opset)
    log.info("exported %s → %s (and %s)", checkpoint, out, sidecar_path(out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from weakseg.engine.run_report import write_run_report

    print(write_run_report(Path(args.run_dir), out=args.out, gallery=args.gallery))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from weakseg.data.classes import ClassSet
    from weakseg.engine.checkpoint import load_model_from_checkpoint
    from weakseg.engine.device import select_device
    from weakseg.engine.predict import expand_inputs, predict_files

    device = select_device(args.device)
    model, recipe, state = load_model_from_checkpoint(args.checkpoint, device, args.overrides)
    recipe = recipe.check()
    paths = expand_inputs(args.inputs)
    out = Path(args.out)
    predict_files(model, paths, out, ClassSet.from_dict(state["class_set"]), recipe.eval, device, not args.quiet)
    print(f"wrote {len(paths)} label maps and overlays to {out}")
    return 0


def cmd_derive_labels(args: argparse.Namespace) -> int:
    from weakseg.data.dataset import SegmentationDataset, camvid_layout, voc_layout
    from weakseg.data.formats import read_coco_boxes, read_voc_xml_boxes
    from weakseg.data.simulate import LabelProtocol, derive_labels
    from weakseg.engine.recipe import load_recipe
    from weakseg.errors import DataError

    if args.recipe:
        data = load_recipe(args.recipe, [f"data.root={args.root}"] if args.root else []).data
    elif args.root:
        data = {"voc": voc_layout, "camvid": camvid_layout}[args.layout](args.root)
        if args.classes:
            data.classes = args.classes
    else:
        raise WeakSegError("derive-labels needs a dataset root (or --recipe)")
    dataset = SegmentationDataset(data, args.split, kinds=("mask",), required=("mask",))
    given = None
    if args.boxes:
        path = Path(args.boxes)
        given = read_voc_xml_boxes(path, dataset.class_set.names) if path.is_dir() else read_coco_boxes(path)
        if not any(rec.image_id in given for rec in dataset.records):  # a wrong file would leave every image boxless
            raise DataError(path, f"has boxes for none of the {len(dataset)} images of split '{args.split}'")
    protocol = LabelProtocol(
        seed=args.seed,
        min_component_area=args.min_area,
        points_mode=args.points_mode,
        background_points=args.background_points,
        scribble_length_fraction=args.length_fraction,
        scribble_width=args.scribble_width,
        include_background=not args.no_background,
    )
    summary = derive_labels(
        dataset.masks(),
        dataset.class_set,
        args.out,
        args.kinds,
        protocol,
        given,
        progress=not args.quiet,
        given_boxes_source=args.boxes or "given boxes",
    )
    print(protocol.describe(args.kinds, given_boxes=given is not None))
    for kind in args.kinds:
        info = summary[kind]
        if "labelled_pixel_fraction" in info:
            print(f"{kind}: labelled-pixel density {info['labelled_pixel_fraction']:.5f}")
        print(f"{kind}: {json.dumps(info)}")
    print(f"wrote {', '.join(args.kinds)} for {summary['images']} images to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from weakseg.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, progress=not args.quiet)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from weakseg.bench.protocol import STANDARD
    from weakseg.bench.runner import bench

    bench(
        STANDARD,
        args.profile,
        args.datasets,
        args.methods or list(STANDARD.row_order),
        args.supervisions,
        data_root=Path(args.data_root),
        results=Path(args.results),
        cache=Path(args.cache),
        docs=Path(args.docs),
        force=args.force,
        seeds=args.seeds,
    )
    return 0


def cmd_bench_ablate(args: argparse.Namespace) -> int:
    from weakseg.bench.ablate import ablate, load_table, summary
    from weakseg.bench.protocol import STANDARD

    table = load_table(args.table)
    entries = ablate(
        STANDARD,
        table,
        dataset=args.dataset,
        supervision=args.supervision,
        variants=args.variants,
        seeds=args.seeds,
        until=args.until,
        force=args.force,
        data_root=Path(args.data_root),
        results=Path(args.results),
        cache=Path(args.cache),
    )
    print(summary(table, entries, args.dataset or table.dataset, args.supervision or table.supervision))
    return 0


def _print_pseudo_metrics(metrics: dict | None, title: str = "pseudo-labels on the training images") -> None:
    """Seed quality of a CAM pipeline: the plain baseline, the CAM seed, the refined seed and the kept labels."""
    if not metrics or "seed" not in metrics:
        return
    from weakseg.engine.metrics import format_table
    from weakseg.engine.pseudo_labels import STAGES

    print(title)
    rows = [{"labels": name, **{k: metrics[name][k] for k in ("miou", "boundary_f", "jf")}} for name in STAGES]
    rows.append({"labels": f"pseudo ({metrics['coverage']:.1%} of pixels kept)", "miou": metrics["pseudo"]["miou"]})
    print(format_table(rows, ["labels", "miou", "boundary_f", "jf"]))


def _print_metrics(metrics: dict, title: str) -> None:
    if not metrics:
        return
    from weakseg.engine.metrics import format_table

    print(title)
    print(format_table([metrics], ["miou", "pixel_accuracy", "boundary_f", "jf"]))
    names = metrics.get("class_names")
    if names:
        rows = [{"class": n, "iou": v} for n, v in zip(names, metrics["per_class_iou"], strict=True)]
        print(format_table(rows, ["class", "iou"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weakseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"weakseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show stack traces of user errors too")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("train", help="train a model from a recipe")
    p.add_argument(
        "items",
        nargs="+",
        metavar="RECIPE|KEY=VALUE",
        help="recipe files or built-in names (each overlaid on the previous, e.g. pce-points data-camvid), "
        "then key=value overrides, e.g. train.steps=200 data.root=DIR",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip finished stages and continue the unfinished one from its last.pt",
    )
    p.add_argument("--stage", help="multi-stage methods: rerun from this stage on (e.g. pseudo), reusing earlier ones")
    p.add_argument("--until", help="multi-stage methods: stop after this stage (e.g. pseudo: only the pseudo-labels)")
    p.add_argument("--no-report", action="store_true", help="do not write RUN_DIR/report.html at the end")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint or run folder on a split with masks")
    p.add_argument(
        "checkpoint",
        help="a checkpoint or a run folder; a CAM learner's checkpoint scores its pseudo-labels (default: on train)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's recipe")
    p.add_argument("--split", help="split to evaluate (default: the recipe's val split)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--save-predictions", metavar="DIR", help="write palette PNG predictions here")
    p.add_argument("--no-report", action="store_true", help="do not write report-<split>.html in the run folder")
    common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint's model to ONNX or TorchScript (verified after writing)")
    p.add_argument("checkpoint", help="a checkpoint or a run folder (its final model)")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument("--out", required=True, help="the model file to write (a sidecar <out>.json describes it)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (11–20)")
    common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write a run folder's self-contained HTML report")
    p.add_argument("run_dir", help="a run folder (single- or multi-stage)")
    p.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--gallery", type=int, default=6, help="training images shown (default 6)")
    common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="write palette PNGs and overlays for images")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files, folders, or .txt lists of image paths")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the checkpoint's recipe, e.g. --set eval.flip=true",
    )
    p.add_argument("--device", default="auto")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("derive-labels", help="simulate weak labels from full masks")
    p.add_argument("root", nargs="?", help="dataset root")
    p.add_argument("--layout", choices=("voc", "camvid"), default="voc", help="folder layout of ROOT")
    p.add_argument("--classes", help="class set: voc, camvid, or a YAML/JSON file (relative to ROOT or absolute)")
    p.add_argument("--recipe", help="take the data layout from this recipe instead")
    p.add_argument("--split", default="train")
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["tags", "boxes", "points", "scribbles"],
        choices=("tags", "boxes", "points", "scribbles"),
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points-mode", choices=("component", "box-centres"), default="component")
    p.add_argument("--background-points", type=int, default=None)
    p.add_argument("--boxes", help="use these boxes (COCO JSON or VOC XML folder) instead of deriving them")
    p.add_argument("--length-fraction", type=float, default=0.5, help="scribble length / skeleton length")
    p.add_argument("--scribble-width", type=int, default=3)
    p.add_argument("--min-area", type=int, default=16)
    p.add_argument("--no-background", action="store_true", help="no points/scribbles on background")
    common(p)
    p.set_defaults(func=cmd_derive_labels)

    p = sub.add_parser("bench", help="benchmark rows method × supervision × dataset on real data")
    p.add_argument("--profile", default="standard", choices=("quick", "standard"))
    p.add_argument("--quick", dest="profile", action="store_const", const="quick", help="same as --profile quick")
    p.add_argument("--standard", dest="profile", action="store_const", const="standard")
    p.add_argument("--datasets", nargs="+", default=["voc454", "camvid"])
    p.add_argument("--methods", nargs="+", default=None, help="default: every method with benchmark rows")
    p.add_argument("--supervisions", nargs="+", default=None, help="only these supervisions (full always runs)")
    p.add_argument("--data-root", default="../shared/data", help="folder holding voc454/ and camvid/")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--cache", default="benchmarks/cache", help="simulated labels and run folders (not committed)")
    p.add_argument("--docs", default="docs")
    p.add_argument("--force", action="store_true", help="rerun rows even when their JSON is up to date")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="train each method row with these seeds")
    common(p)
    p.set_defaults(func=cmd_bench)
    bench_sub = p.add_subparsers(dest="bench_command", metavar="ablate")
    a = bench_sub.add_parser(
        "ablate",
        help="a method's component ablation: variants of its standard-profile bench row",
        description="Run the variants of an ablation table (weakseg/recipes/ablations/TABLE.yaml) not yet recorded "
        "with their current recipe; entries go to RESULTS/ablations/DATASET-TABLE-SUPERVISION.json.",
    )
    a.add_argument("table", metavar="TABLE", help="e.g. rloss, spml, pmp, pmp-pretrained, ppc")
    a.add_argument("--dataset", default=None, help="benchmark dataset (default: the table's, voc454)")
    supervisions = ("tags", "boxes", "points", "scribbles")
    a.add_argument("--supervision", default=None, choices=supervisions, help="default: the table's")
    a.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all of the table's)")
    a.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="tables recorded per seed: these seeds (default 0)"
    )
    a.add_argument(
        "--until",
        default=None,
        help="stop after this pseudo-label stage and record its seed scores (default: the table's; without one, "
        "every stage runs and the val metrics are recorded)",
    )
    a.add_argument("--force", action="store_true", help="rerun variants even when recorded, without resuming")
    a.add_argument("--data-root", default="../shared/data", help="folder holding voc454/ and camvid/")
    a.add_argument("--results", default="benchmarks/results")
    a.add_argument("--cache", default="benchmarks/cache", help="simulated labels and run folders (not committed)")
    common(a)
    a.set_defaults(func=cmd_bench_ablate)

    p = sub.add_parser("demo", help="train full and pCE on generated data and report")
    p.add_argument("--out", default="weakseg-demo", help="output folder")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the demo's)")
    common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun rank 0 logs; read from the environment so that `weakseg` starts without importing torch.
    _setup_logging(args.quiet or os.environ.get("RANK", "0") != "0")
    try:
        return args.func(args)
    except WeakSegError as exc:
        if args.debug:
            raise
        print(f"weakseg: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weakseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
