"""Multi-stage training from one recipe: a method's plan (``Method.plan``) runs in order, each stage in its own
folder, resumable; and what "evaluate this run" means.

Single-stage methods have one stage, ``train``, that writes to the recipe's ``output_dir`` itself. Multi-stage
methods (e.g. the CAM learners: ``cam`` → ``pseudo`` → ``seg``) write ``output_dir/<stage>/``; a labelling stage
writes its label maps to ``output_dir/<stage>/labels/``, which a later stage reading them (``labels_from``) trains
on. Each stage's recipe is the recipe overlaid with ``stages.<stage>`` and then with what the plan sets for that
stage. With ``resume`` a finished stage whose recipe is unchanged is skipped and an unfinished training stage
continues from its ``last.pt``; ``start`` reruns from a given stage on, reusing the finished stages before it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from weakseg import distributed
from weakseg.config import deep_merge, from_dict, to_dict, upgrade_recipe_dict
from weakseg.data.dataset import SegmentationDataset, resolve_class_set
from weakseg.data.formats import write_json
from weakseg.data.sample import LABEL_KINDS
from weakseg.engine.checkpoint import LAST, load_model_from_checkpoint
from weakseg.engine.device import select_device
from weakseg.engine.evaluator import evaluate
from weakseg.engine.probe import fit_stage
from weakseg.engine.pseudo_labels import classifier_map, make_pseudo_labels
from weakseg.engine.recipe import Recipe
from weakseg.engine.relabel import LABELLERS, relabel_training_images
from weakseg.engine.trainer import RESUME_INVARIANTS, Trainer
from weakseg.errors import ConfigError, DataError, TrainingError
from weakseg.methods import METHODS, build_method
from weakseg.methods.stages import Fit, ModelStage, PseudoLabel, Relabel, Stage, Train, check_plan

log = logging.getLogger(__name__)

LABELS = "labels"  # a labelling stage's folder of label maps
# Where a run's metrics.json keeps each kind of labelling stage's scores, and how the report titles its labels.
LABEL_RECORDS: dict[type, tuple[str, str]] = {
    PseudoLabel: ("pseudo_labels", "pseudo-labels"),
    Relabel: ("relabel", "second-round labels"),
}


@dataclass
class PipelineResult:
    output_dir: Path
    metrics: dict  # the final model's val metrics; multi-stage runs add "pseudo_labels" (seed quality on train)
    final_checkpoint: Path
    train_images_per_s: float  # of the last training stage run
    weights_source: str  # the ImageNet weights the last training stage started from
    stage_wall_s: dict[str, float] = field(default_factory=dict)
    resumed_stages: list[str] = field(default_factory=list)  # skipped as finished, or continued from a checkpoint


class Pipeline:
    """Runs the plan of ``recipe.method``."""

    def __init__(self, recipe: Recipe, *, progress: bool = True) -> None:
        self.recipe, self.progress = recipe, progress
        self.out = Path(recipe.output_dir)
        class_set = resolve_class_set(recipe.data, recipe.data.train_split)
        method = build_method(recipe.method, recipe.method_args, recipe.supervision, class_set)
        self.plan: list[Stage] = check_plan(method.plan(recipe.supervision, method.args))
        self.names = tuple(stage.name for stage in self.plan)
        for name, overlay in recipe.stages.items():
            if name not in self.names:
                raise ConfigError(f"stages.{name}: method '{recipe.method}' has stages {', '.join(self.names)}")
            from_dict(Recipe, overlay, f"stages.{name}")

    @property
    def multi_stage(self) -> bool:
        return len(self.plan) > 1

    def stage(self, name: str) -> Stage:
        return self.plan[self.names.index(name)]

    def stage_dir(self, name: str) -> Path:
        return self.out / name if self.multi_stage else self.out

    def labels_dir(self, name: str) -> Path:
        """Where labelling stage ``name`` writes its label maps."""
        return self.stage_dir(name) / LABELS

    def stage_recipe(self, name: str) -> Recipe:
        """The recipe a stage runs: overlaid with ``stages.<name>`` and what the plan sets for the stage."""
        stage = self.stage(name)
        data = deep_merge(to_dict(self.recipe), self.recipe.stages.get(name, {}))
        if isinstance(stage, ModelStage):
            data = deep_merge(data, stage.overlay)
            if "method_args" in stage.overlay:  # another method's arguments replace, not extend, the recipe's
                data["method_args"] = dict(stage.overlay["method_args"])
        if isinstance(stage, Train) and stage.labels_from is not None:
            data["data"]["train_masks"] = str(self.labels_dir(stage.labels_from).resolve())
        elif isinstance(stage, Relabel):
            data = deep_merge(data, {"eval": stage.eval})
        data["output_dir"] = str(self.stage_dir(name))
        data["stages"] = {}
        return from_dict(Recipe, data).check()

    def final_checkpoint(self) -> Path:
        return self.stage_dir(self.names[-1]) / LAST

    # ------------------------------------------------------------------ completion
    def finished(self, name: str) -> bool:
        """Whether stage ``name`` ran to its end with the recipe it would run with now."""
        folder = self.stage_dir(name)
        metrics = folder / "metrics.json"
        if not metrics.is_file():
            return False
        if not isinstance(self.stage(name), ModelStage):
            return json.loads(metrics.read_text()).get("config") == self._labelling_fingerprint(name)
        recipe_file = folder / "recipe.yaml"
        if not recipe_file.is_file():
            return False
        saved, current = upgrade_recipe_dict(yaml.safe_load(recipe_file.read_text())), to_dict(self.stage_recipe(name))
        return all(saved.get(k) == current.get(k) for k in (*RESUME_INVARIANTS, "train"))

    def _labelling_fingerprint(self, name: str) -> dict:
        """What a labelling stage's labels depend on: its settings and the checkpoint of the model that made them."""
        stage = self.stage(name)
        checkpoint = None if stage.source is None else str(self.stage_dir(stage.source) / LAST)
        if isinstance(stage, PseudoLabel):
            return {"pseudo": to_dict(self.stage_recipe(name).pseudo), "checkpoint": checkpoint}
        return {"eval": to_dict(self.stage_recipe(name).eval), "labeller": stage.labeller, "checkpoint": checkpoint}

    # ------------------------------------------------------------------ running
    def run(self, *, resume: bool = False, start: str | None = None, until: str | None = None) -> PipelineResult:
        """Run the stages from ``start`` (default: the first) to ``until`` (default: the last), inclusive."""
        for flag, name in (("--stage", start), ("--until", until)):
            if name is not None and name not in self.names:
                raise ConfigError(f"{flag} {name}: method '{self.recipe.method}' has stages {', '.join(self.names)}")
        first = self.names.index(start) if start else 0
        last = self.names.index(until) if until else len(self.names) - 1
        if last < first:
            raise ConfigError(f"--until {until} comes before --stage {start}")
        for name in self.names[:first]:
            if not self.finished(name):
                raise TrainingError(f"{self.stage_dir(name)}: stage '{name}' has not finished; cannot start at {start}")
        walls: dict[str, float] = {}
        resumed: list[str] = []
        images_per_s, weights = 0.0, "not run"
        for stage in self.plan[first : last + 1]:
            name = stage.name
            if resume and start is None and self.finished(name):
                log.info("stage %s: finished, skipped (%s)", name, self.stage_dir(name))
                resumed.append(name)
                if isinstance(stage, ModelStage):
                    images_per_s, weights = self._recorded_training(name)
                continue
            begin = time.perf_counter()
            if isinstance(stage, PseudoLabel):
                self.run_pseudo_labels(stage)
            elif isinstance(stage, Relabel):
                self.run_relabel(stage)
            elif isinstance(stage, Fit):
                fitted = fit_stage(self.stage_recipe(name), progress=self.progress)
                images_per_s, weights = fitted.images_per_s, fitted.weights_source
            else:
                images_per_s, weights, continued = self.run_training(name, resume=resume and start is None)
                resumed += [name] if continued else []
            walls[name] = time.perf_counter() - begin
        metrics = self._final_metrics()
        return PipelineResult(self.out, metrics, self.final_checkpoint(), images_per_s, weights, walls, resumed)

    def run_training(self, name: str, *, resume: bool) -> tuple[float, str, bool]:
        """Train stage ``name``; returns its images/s, the weights it started from and whether it continued from a
        checkpoint."""
        recipe = self.stage_recipe(name)
        stage = self.stage(name)
        init = self.stage_dir(stage.init_from) / LAST if stage.init_from else None
        trainer = Trainer(recipe, progress=self.progress, init=init)
        log.info("stage %s: %s / %s, weights: %s", name, recipe.method, recipe.supervision,
                 trainer.model.backbone.info.weights_source)  # fmt: skip
        continued = resume and trainer.resume()
        if continued:
            log.info("stage %s: resuming at step %d of %d", name, trainer.step, recipe.train.steps)
        return trainer.fit().train_images_per_s, trainer.model.backbone.info.weights_source, continued

    def _recorded_training(self, name: str) -> tuple[float, str]:
        """A finished training stage's images/s and starting weights, as its ``metrics.json`` recorded them."""
        summary = json.loads((self.stage_dir(name) / "metrics.json").read_text())
        return summary.get("train_images_per_s", 0.0), summary.get("weights_source", "not recorded")

    def run_pseudo_labels(self, stage: PseudoLabel) -> dict:
        """CAMs of the training split (or, without a source, box priors) → ``<stage>/labels/*.png`` and
        ``<stage>/metrics.json``."""
        recipe = self.stage_recipe(stage.name)
        config = self._labelling_fingerprint(stage.name)
        device = select_device(recipe.train.device)
        model = state = None
        if stage.source is not None:
            model, _, state = load_model_from_checkpoint(config["checkpoint"], device)
        dataset = pseudo_label_dataset(recipe, recipe.data.train_split)
        metrics = make_pseudo_labels(
            model, dataset, recipe.supervision, recipe.pseudo, device,
            out_dir=self.labels_dir(stage.name), progress=self.progress,
        )  # fmt: skip
        metrics["config"] = config
        if model is not None:
            metrics["cam_step"] = state["step"]
            if "mask" in dataset.kinds:
                metrics["classifier"] = self._classifier_maps(model, recipe, dataset, device)
        _write_on_main(self.stage_dir(stage.name) / "metrics.json", metrics)
        if "seed" in metrics:
            log.info("stage %s: seed mIoU %.4f, refined %.4f, pseudo-labels %.4f on %.1f%% of the pixels", stage.name,
                     metrics["seed"]["miou"], metrics["refined"]["miou"], metrics["pseudo"]["miou"],
                     100 * metrics["coverage"])  # fmt: skip
        return metrics

    def _classifier_maps(
        self, model: torch.nn.Module, recipe: Recipe, train: SegmentationDataset, device: torch.device
    ) -> dict:
        """The CAM learner's multi-label mAP on the training images and, where the val split has masks, on those."""
        scores = {"train": classifier_map(model, train, device, progress=self.progress)}
        try:
            val = SegmentationDataset(recipe.data, recipe.data.val_split, kinds=("mask",), required=("mask",))
        except DataError as exc:
            log.info("the classifier is not scored on %s: no usable masks (%s)", recipe.data.val_split, exc)
        else:
            scores["val"] = classifier_map(model, val, device, progress=self.progress)
        log.info("classifier mAP: %s", ", ".join(f"{split} {m['map']:.3f}" for split, m in scores.items()))
        return scores

    def run_relabel(self, stage: Relabel) -> dict:
        """Stage ``source``'s model labels every training image, by its inference under the stage's ``eval`` settings
        or by the stage's labeller: ``<stage>/labels/*.png`` and ``<stage>/metrics.json`` (scored when the split has
        masks)."""
        recipe = self.stage_recipe(stage.name)
        config = self._labelling_fingerprint(stage.name)
        device = select_device(recipe.train.device)
        model, _, _ = load_model_from_checkpoint(config["checkpoint"], device)
        eval_cfg = recipe.eval
        eval_cfg.max_images = None
        dataset = pseudo_label_dataset(recipe, recipe.data.train_split)
        if stage.labeller == "prediction":
            metrics = evaluate(model, dataset, eval_cfg, device, num_workers=0, progress=self.progress,
                               prediction_dir=self.labels_dir(stage.name))  # fmt: skip
        else:
            labeller = LABELLERS[stage.labeller](model, dataset.class_set, device, crf=eval_cfg.crf)
            metrics = relabel_training_images(labeller, dataset, out_dir=self.labels_dir(stage.name),
                                              progress=self.progress)  # fmt: skip
        if "mask" not in dataset.kinds:
            metrics = {"num_images": metrics["num_images"]}
        metrics["config"] = config
        _write_on_main(self.stage_dir(stage.name) / "metrics.json", metrics)
        if "miou" in metrics:
            log.info("stage %s: mIoU %.4f of the new training labels", stage.name, metrics["miou"])
        return metrics

    def _final_metrics(self) -> dict:
        """The final stage's metrics; a multi-stage run adds its labelling stages' scores and its layout (the final
        stage, and where each labelling stage's maps are) and writes them to ``output_dir/metrics.json``."""
        path = self.stage_dir(self.names[-1]) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        if not self.multi_stage:
            return metrics
        label_maps = []
        for stage in self.plan:
            if isinstance(stage, ModelStage):
                continue
            key, title = LABEL_RECORDS[type(stage)]
            scores = self.stage_dir(stage.name) / "metrics.json"
            if scores.is_file():
                metrics[key] = json.loads(scores.read_text())
            label_maps.append({"stage": stage.name, "folder": f"{stage.name}/{LABELS}", "title": title})
        metrics["final_stage"] = self.names[-1]  # where `weakseg eval RUN_DIR` finds the final model
        metrics["label_maps"] = label_maps  # what `weakseg report RUN_DIR` shows beside the weak labels
        _write_on_main(self.out / "metrics.json", metrics)
        return metrics


def run_summary(run_dir: Path) -> dict:
    """A run folder's ``metrics.json`` (empty when it has none)."""
    summary = run_dir / "metrics.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def final_checkpoint(run_dir: Path) -> Path:
    """A run folder's final model: ``last.pt`` of a single-stage run, else that of the stage its ``metrics.json``
    names (``final_stage``; ``seg`` for runs recorded before it was)."""
    final = run_summary(run_dir).get("final_stage", "seg")
    for candidate in (run_dir / LAST, run_dir / final / LAST):
        if candidate.is_file():
            return candidate
    raise DataError(run_dir, f"no {LAST} here or in {final}/ (is it a finished run folder?)")


def run_checkpoint(path: Path) -> Path:
    """A checkpoint file as it is, or a run folder's final model."""
    return final_checkpoint(path) if path.is_dir() else path


def label_map_folders(run_dir: Path) -> list[tuple[Path, str]]:
    """The folders of label maps a run made for its training images, with their titles, in the order it made them."""
    return [(run_dir / entry["folder"], entry["title"]) for entry in run_summary(run_dir).get("label_maps", [])]


@dataclass
class RunEvaluation:
    checkpoint: Path
    split: str
    output: str  # the model's output: "segmentation" (scored on the split's masks) or "cam" (its pseudo-labels)
    metrics: dict


def evaluate_run(
    path: Path,
    device: torch.device,
    *,
    split: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    prediction_dir: Path | None = None,
    progress: bool = True,
) -> RunEvaluation:
    """Score a checkpoint or a run folder (its final model) on ``split``, the one thing ``weakseg eval`` means.

    A segmentation model is scored on the split's masks (default: the val split); a run folder's scores of its
    pseudo-labels come along. A CAM learner's output is its pseudo-labels: they are made and scored on the split
    (default: the training split). ``overrides`` (``key=value``) change the checkpoint's recipe first.
    """
    checkpoint = run_checkpoint(path)
    model, recipe, _ = load_model_from_checkpoint(checkpoint, device, overrides)
    recipe = recipe.check()
    output = METHODS[recipe.method].output
    if output == "cam":
        split = split or recipe.data.train_split
        dataset = pseudo_label_dataset(recipe, split)
        if "mask" not in dataset.kinds:
            raise DataError(checkpoint, f"split '{split}' has no masks to score the CAM pseudo-labels against")
        metrics = make_pseudo_labels(
            model, dataset, recipe.supervision, recipe.pseudo, device, out_dir=prediction_dir, progress=progress
        )
        return RunEvaluation(checkpoint, split, output, metrics)
    split = split or recipe.data.val_split
    dataset = SegmentationDataset(recipe.data, split, kinds=("mask",), required=("mask",))
    metrics = evaluate(model, dataset, recipe.eval, device, num_workers=recipe.data.num_workers, progress=progress,
                       prediction_dir=prediction_dir)  # fmt: skip
    seeds = run_summary(path).get("pseudo_labels") if path.is_dir() else None
    if seeds:
        metrics["pseudo_labels"] = seeds
    return RunEvaluation(checkpoint, split, output, metrics)


def _write_on_main(path: Path, data: dict) -> None:
    """Rank 0 writes a stage's JSON; every process waits until it is there."""
    if distributed.is_main():
        write_json(path, data)
    distributed.barrier()


def pseudo_label_dataset(recipe: Recipe, split: str) -> SegmentationDataset:
    """``split`` with the weak labels the CAM pipeline reads, and its masks when they exist (for seed scores)."""
    mixed = recipe.supervision == "mixed"
    kinds = LABEL_KINDS if mixed else (recipe.supervision,)
    required = ("any-weak",) if mixed else kinds
    try:
        return SegmentationDataset(recipe.data, split, kinds=(*kinds, "mask"), required=required)
    except DataError as exc:
        log.info("pseudo-labels of %s are not scored: no usable masks (%s)", split, exc)
        return SegmentationDataset(recipe.data, split, kinds=kinds, required=required)
