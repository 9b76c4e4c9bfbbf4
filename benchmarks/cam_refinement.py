"""Pseudo-label quality of one finished CAM stage under each refinement (the "seed" mIoU on the train split).

    python -m benchmarks.cam_refinement [--dataset voc454] [--method cam] [--supervision tags] [--seed 0]
                                        [--data-root ../shared/data] [--cache benchmarks/cache]
                                        [--out benchmarks/results/ablations]

Reads the CAM learner stage (the one its pseudo-labels come from) of the standard-profile bench row (run it first:
`weakseg bench --methods cam ...`), labels every training image with each variant of the recipe's `pseudo` section
and writes baseline / seed / refined / kept-label scores and the seconds per image to
`<out>/<dataset>-<method>-<supervision>-refinement.json`.
"""

from __future__ import annotations

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
from weakseg.methods import PseudoLabel, learners
from weakseg.pseudo.cam import PseudoLabelConfig

VARIANTS = {  # each sets both keys: the recipe's own may refine otherwise
    "none": {"refine": "none", "crf": False},
    "pamr": {"refine": "pamr", "crf": False},
    "random walk": {"refine": "random_walk", "crf": False},
    "dense CRF": {"refine": "none", "crf": True},
    "pamr + dense CRF": {"refine": "pamr", "crf": True},
}


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("cam_refinement", __doc__)
    parser.add_argument("--dataset", default="voc454", choices=[d.name for d in STANDARD.datasets])
    parser.add_argument("--method", default="cam", choices=learners("cam"))
    parser.add_argument("--supervision", default="tags", choices=("tags", "boxes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"), help="the bench's run folders")
    add_out(parser, Path("benchmarks/results/ablations"), "the scores")
    args = parser.parse_args(argv)

    dataset = STANDARD.dataset(args.dataset)
    results = Path("benchmarks/results")  # the row as the bench records it
    row = Row(STANDARD, "standard", dataset, args.method, args.supervision, args.data_root, results, args.seed)
    recipe = row.recipe(args.cache)
    pipeline = Pipeline(recipe, progress=False)
    learner = next(stage.source for stage in pipeline.plan if isinstance(stage, PseudoLabel))
    checkpoint = pipeline.stage_dir(learner) / "last.pt"
    if not pipeline.finished(learner):
        raise SystemExit(f"{checkpoint}: run the bench row first ({row.name})")
    device = select_device(recipe.train.device)
    model, _, _ = load_model_from_checkpoint(checkpoint, device)
    dataset = pseudo_label_dataset(recipe, recipe.data.train_split)
    out = {"row": row.name, "checkpoint_recipe": to_dict(pipeline.stage_recipe(learner)),
           "git_commit": git_commit(), "images": len(dataset), "variants": {}}  # fmt: skip
    for name in args.variants:
        cfg = PseudoLabelConfig(**{**vars(recipe.pseudo), **VARIANTS[name]})
        start = time.perf_counter()
        metrics = make_pseudo_labels(model, dataset, args.supervision, cfg, device, progress=False)
        seconds = (time.perf_counter() - start) / len(dataset)
        summary = pseudo_summary(metrics, cfg)
        out["variants"][name] = {"s_per_image": seconds, **summary}
        seed, refined, kept = summary["seed"], summary["refined"], summary["pseudo"]
        print(
            f"{name:>18}: seed {seed['miou']:.3f} → refined {refined['miou']:.3f} "
            f"(F {seed['boundary_f']:.3f} → {refined['boundary_f']:.3f}), "
            f"kept {kept['miou']:.3f} on {kept['coverage']:.1%}, {seconds:.2f} s/image"
        )
    path = args.out / f"{args.dataset}-{args.method}-{args.supervision}-refinement.json"
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
