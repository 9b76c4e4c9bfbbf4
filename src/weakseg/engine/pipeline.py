"""Multi-stage training from one recipe: a method's stages run in order, each in its own folder, resumable.

Single-stage methods have one stage, ``train``, that writes to the recipe's ``output_dir`` itself. Multi-stage
methods (the CAM learners: ``cam`` → ``pseudo`` → ``seg``) write ``output_dir/<stage>/``; each stage's recipe is the
recipe overlaid with ``stages.<stage>`` and then with what the method sets for that stage. With ``resume`` a
finished stage whose recipe is unchanged is skipped and an unfinished training stage continues from its
``last.pt``; ``start`` reruns from a given stage on, reusing the finished stages before it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from weakseg import distributed
from weakseg.config import deep_merge, from_dict, to_dict, upgrade_recipe_dict
from weakseg.data.dataset import SegmentationDataset, resolve_class_set
from weakseg.data.formats import write_json
from weakseg.data.sample import LABEL_KINDS
from weakseg.engine.checkpoint import LAST, load_model_from_checkpoint
from weakseg.engine.device import select_device
from weakseg.engine.evaluator import evaluate
from weakseg.engine.pseudo_labels import make_pseudo_labels
from weakseg.engine.recipe import Recipe
from weakseg.engine.trainer import RESUME_INVARIANTS, Trainer
from weakseg.errors import ConfigError, DataError, TrainingError
from weakseg.methods import build_method

log = logging.getLogger(__name__)

PSEUDO_STAGE = "pseudo"  # the stage that turns a CAM learner into label maps
RELABEL_STAGE = "relabel"  # the stage that labels the training images with the previous stage's model
# every other stage trains


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
    """Runs the stages of ``recipe.method``."""

    def __init__(self, recipe: Recipe, *, progress: bool = True) -> None:
        self.recipe, self.progress = recipe, progress
        self.out = Path(recipe.output_dir)
        class_set = resolve_class_set(recipe.data, recipe.data.train_split)
        self.method = build_method(recipe.method, recipe.method_args, recipe.supervision, class_set)
        self.stages = self.method.stages
        for name, overlay in recipe.stages.items():
            if name not in self.stages:
                raise ConfigError(f"stages.{name}: method '{recipe.method}' has stages {', '.join(self.stages)}")
            from_dict(Recipe, overlay, f"stages.{name}")

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1

    def stage_dir(self, name: str) -> Path:
        return self.out / name if self.multi_stage else self.out

    def stage_recipe(self, name: str) -> Recipe:
        """The recipe a training stage runs: overlaid with ``stages.<name>`` and the method's settings."""
        data = to_dict(self.recipe)
        data = deep_merge(data, self.recipe.stages.get(name, {}))
        overlay = self.method.stage_overlay(name, self.out)
        data = deep_merge(data, overlay)
        if "method_args" in overlay:  # another method's arguments replace, not extend, the recipe's
            data["method_args"] = overlay["method_args"]
        data["output_dir"] = str(self.stage_dir(name))
        data["stages"] = {}
        return from_dict(Recipe, data).check()

    def final_checkpoint(self) -> Path:
        return self.stage_dir(self.stages[-1]) / LAST

    # ------------------------------------------------------------------ completion
    def finished(self, name: str) -> bool:
        """Whether stage ``name`` ran to its end with the recipe it would run with now."""
        folder = self.stage_dir(name)
        metrics = folder / "metrics.json"
        if not metrics.is_file():
            return False
        if name == PSEUDO_STAGE:
            return json.loads(metrics.read_text()).get("config") == self._pseudo_fingerprint()
        if name == RELABEL_STAGE:
            return json.loads(metrics.read_text()).get("config") == self._relabel_fingerprint()
        recipe_file = folder / "recipe.yaml"
        if not recipe_file.is_file():
            return False
        saved, current = upgrade_recipe_dict(yaml.safe_load(recipe_file.read_text())), to_dict(self.stage_recipe(name))
        return all(saved.get(k) == current.get(k) for k in (*RESUME_INVARIANTS, "train"))

    def _pseudo_fingerprint(self) -> dict:
        return {"pseudo": to_dict(self.recipe.pseudo), "checkpoint": str(self.stage_dir(self.stages[0]) / LAST)}

    def _relabel_fingerprint(self) -> dict:
        before = self.stages[self.stages.index(RELABEL_STAGE) - 1]
        eval_cfg = to_dict(self.stage_recipe(RELABEL_STAGE).eval)
        return {"eval": eval_cfg, "checkpoint": str(self.stage_dir(before) / LAST)}

    # ------------------------------------------------------------------ running
    def run(self, *, resume: bool = False, start: str | None = None, until: str | None = None) -> PipelineResult:
        """Run the stages from ``start`` (default: the first) to ``until`` (default: the last), inclusive."""
        for flag, name in (("--stage", start), ("--until", until)):
            if name is not None and name not in self.stages:
                raise ConfigError(f"{flag} {name}: method '{self.recipe.method}' has stages {', '.join(self.stages)}")
        first = self.stages.index(start) if start else 0
        last = self.stages.index(until) if until else len(self.stages) - 1
        if last < first:
            raise ConfigError(f"--until {until} comes before --stage {start}")
        for name in self.stages[:first]:
            if not self.finished(name):
                raise TrainingError(f"{self.stage_dir(name)}: stage '{name}' has not finished; cannot start at {start}")
        walls: dict[str, float] = {}
        resumed: list[str] = []
        images_per_s, weights = 0.0, "not run"
        for name in self.stages[first : last + 1]:
            if resume and start is None and self.finished(name):
                log.info("stage %s: finished, skipped (%s)", name, self.stage_dir(name))
                resumed.append(name)
                if name not in (PSEUDO_STAGE, RELABEL_STAGE):
                    images_per_s, weights = self._recorded_training(name)
                continue
            begin = time.perf_counter()
            if name == PSEUDO_STAGE:
                self.run_pseudo_labels()
            elif name == RELABEL_STAGE:
                self.run_relabel()
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
        trainer = Trainer(recipe, progress=self.progress)
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

    def run_pseudo_labels(self) -> dict:
        """CAMs of the training split → ``pseudo/labels/*.png`` and ``pseudo/metrics.json``."""
        folder = self.stage_dir(PSEUDO_STAGE)
        checkpoint = self.stage_dir(self.stages[0]) / LAST
        device = select_device(self.recipe.train.device)
        model, _, state = load_model_from_checkpoint(checkpoint, device)
        dataset = pseudo_label_dataset(self.recipe, self.recipe.data.train_split)
        metrics = make_pseudo_labels(
            model, dataset, self.recipe.supervision, self.recipe.pseudo, device,
            out_dir=folder / "labels", progress=self.progress,
        )  # fmt: skip
        metrics["config"] = self._pseudo_fingerprint()
        metrics["cam_step"] = state["step"]
        _write_on_main(folder / "metrics.json", metrics)
        if "seed" in metrics:
            log.info("stage pseudo: seed mIoU %.4f, refined %.4f, pseudo-labels %.4f on %.1f%% of the pixels",
                     metrics["seed"]["miou"], metrics["refined"]["miou"], metrics["pseudo"]["miou"],
                     100 * metrics["coverage"])  # fmt: skip
        return metrics

    def run_relabel(self) -> dict:
        """The previous stage's model (its inference, ``eval`` settings of the ``relabel`` stage's recipe) labels every
        training image: ``relabel/labels/*.png`` and ``relabel/metrics.json`` (scored when the split has masks)."""
        folder = self.stage_dir(RELABEL_STAGE)
        config = self._relabel_fingerprint()
        device = select_device(self.recipe.train.device)
        model, _, _ = load_model_from_checkpoint(config["checkpoint"], device)
        eval_cfg = self.stage_recipe(RELABEL_STAGE).eval
        eval_cfg.max_images = None
        dataset = pseudo_label_dataset(self.recipe, self.recipe.data.train_split)
        metrics = evaluate(model, dataset, eval_cfg, device, num_workers=0, progress=self.progress,
                           prediction_dir=folder / "labels")  # fmt: skip
        if "mask" not in dataset.kinds:
            metrics = {"num_images": metrics["num_images"]}
        metrics["config"] = config
        _write_on_main(folder / "metrics.json", metrics)
        if "miou" in metrics:
            log.info("stage relabel: mIoU %.4f of the new training labels", metrics["miou"])
        return metrics

    def _final_metrics(self) -> dict:
        path = self.stage_dir(self.stages[-1]) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        if self.multi_stage:
            pseudo = self.stage_dir(PSEUDO_STAGE) / "metrics.json"
            if pseudo.is_file():
                metrics["pseudo_labels"] = json.loads(pseudo.read_text())
            relabel = self.stage_dir(RELABEL_STAGE) / "metrics.json"
            if RELABEL_STAGE in self.stages and relabel.is_file():
                metrics["relabel"] = json.loads(relabel.read_text())
            metrics["final_stage"] = self.stages[-1]  # where `weakseg eval RUN_DIR` finds the final model
            _write_on_main(self.out / "metrics.json", metrics)
        return metrics


def final_checkpoint(run_dir: Path) -> Path:
    """A run folder's final model: ``last.pt`` of a single-stage run, else that of the stage its ``metrics.json``
    names (``final_stage``; ``seg`` for runs recorded before it was)."""
    summary = run_dir / "metrics.json"
    final = json.loads(summary.read_text()).get("final_stage", "seg") if summary.is_file() else "seg"
    for candidate in (run_dir / LAST, run_dir / final / LAST):
        if candidate.is_file():
            return candidate
    raise DataError(run_dir, f"no {LAST} here or in {final}/ (is it a finished run folder?)")


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
