"""Quality of box pseudo-labels on the train split: each box prior alone, and fused with a CAM learner's box-CAMs.

    python -m benchmarks.box_labels [--dataset voc454] [--cam-row probe-tags] [--variants ...]
                                    [--data-root ../shared/data] [--cache benchmarks/cache]
                                    [--out benchmarks/results/ablations]

Labels every training image of the dataset's real boxes with each variant of the ``pseudo`` section (the
``box-prior-boxes`` row's recipe overlaid with the variant) and writes baseline (filled boxes) / seed / refined /
kept-label scores and the seconds per image to ``<out>/<dataset>-box-labels.json`` (variants recorded there before
and not measured again are kept). The variants that read CAMs use the CAM learner stage of the standard-profile
bench row ``--cam-row`` (run it first), e.g. ``probe-tags``: the linear probe's head fitted on each image's classes,
which for boxes are the classes of its boxes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import add_out, entry_point
from weakseg.bench.protocol import STANDARD
from weakseg.bench.rows import Row
from weakseg.bench.runner import git_commit, pseudo_summary
from weakseg.config import to_dict
from weakseg.data.formats import write_json
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.engine.device import select_device
from weakseg.engine.pipeline import Pipeline, pseudo_label_dataset
from weakseg.engine.pseudo_labels import make_pseudo_labels
from weakseg.methods import PseudoLabel
from weakseg.pseudo.cam import PseudoLabelConfig

PRIOR_ONLY = {"box_cam_weight": 0.0, "refine": "none", "crf": False, "box_ignore_band": None}
VARIANTS = {  # name: (pseudo settings over the box-prior-boxes recipe's, whether it reads CAMs)
    "filled boxes": ({**PRIOR_ONLY, "box_prior": "box"}, False),
    "GrabCut": ({**PRIOR_ONLY, "box_prior": "grabcut"}, False),
    "GrabCut + dense CRF": ({**PRIOR_ONLY, "box_prior": "grabcut", "crf": True}, False),
    "box-CAM (SPML, t 0.5), PAMR": ({"box_cam_weight": 1.0, "refine": "pamr", "box_threshold": 0.5}, True),
    "box-CAM, t 0.15": ({"box_cam_weight": 1.0, "refine": "none", "box_threshold": 0.15}, True),
    "½ GrabCut + ½ box-CAM": ({"box_prior": "grabcut", "box_cam_weight": 0.5, "refine": "none"}, True),
    "½ GrabCut + ½ box-CAM, ignore band (0.3, 0.7)": (
        {"box_prior": "grabcut", "box_cam_weight": 0.5, "refine": "none", "box_ignore_band": (0.3, 0.7)},
        True,
    ),
    "¾ GrabCut + ¼ box-CAM": ({"box_prior": "grabcut", "box_cam_weight": 0.25, "refine": "none"}, True),
}


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("box_labels", __doc__)
    parser.add_argument("--dataset", default="voc454", choices=[d.name for d in STANDARD.datasets if d.given_boxes])
    parser.add_argument("--cam-row", default="probe-tags", help="the bench row whose CAM learner gives the CAMs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"), help="the bench's run folders")
    add_out(parser, Path("benchmarks/results/ablations"), "the scores")
    args = parser.parse_args(argv)

    bench = STANDARD.dataset(args.dataset)
    results = Path("benchmarks/results")
    recipe = Row(STANDARD, "standard", bench, "box-prior", "boxes", args.data_root, results).recipe(args.cache)
    device = select_device(recipe.train.device)
    dataset = pseudo_label_dataset(recipe, recipe.data.train_split)
    model = None
    path = args.out / f"{args.dataset}-box-labels.json"
    # Variants recorded earlier and not measured now are kept (each entry names its commit).
    out: dict = json.loads(path.read_text()) if path.is_file() else {"variants": {}}
    out.update({"dataset": args.dataset, "images": len(dataset)})
    if any(VARIANTS[name][1] for name in args.variants):
        method, supervision = args.cam_row.rsplit("-", 1)
        cam_row = Row(STANDARD, "standard", bench, method, supervision, args.data_root, results)
        pipeline = Pipeline(cam_row.recipe(args.cache), progress=False)
        learner = next(stage.source for stage in pipeline.plan if isinstance(stage, PseudoLabel))
        if not pipeline.finished(learner):
            raise SystemExit(f"{pipeline.stage_dir(learner)}: run the bench row {cam_row.name} first")
        model, _, _ = load_model_from_checkpoint(pipeline.stage_dir(learner) / "last.pt", device)
        out.setdefault("cam_recipes", {})[cam_row.name] = to_dict(pipeline.stage_recipe(learner))
    for name in args.variants:
        settings, reads_cams = VARIANTS[name]
        cfg = PseudoLabelConfig(**{**vars(recipe.pseudo), **settings})
        start = time.perf_counter()
        metrics = make_pseudo_labels(model if reads_cams else None, dataset, "boxes", cfg, device, progress=False)
        seconds = (time.perf_counter() - start) / len(dataset)
        summary = pseudo_summary(metrics, cfg)
        out["variants"][name] = {"settings": settings, "git_commit": git_commit(), "s_per_image": seconds, **summary}
        if reads_cams:
            out["variants"][name]["cam_row"] = args.cam_row
        seed, refined, kept = summary["seed"], summary["refined"], summary["pseudo"]
        print(
            f"{name:>48}: seed {seed['miou']:.3f} → refined {refined['miou']:.3f} "
            f"(F {seed['boundary_f']:.3f} → {refined['boundary_f']:.3f}), "
            f"kept {kept['miou']:.3f} on {kept['coverage']:.1%}, {seconds:.2f} s/image",
            flush=True,
        )
        write_json(path, out)  # after every variant: an interrupted run keeps what it measured
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
