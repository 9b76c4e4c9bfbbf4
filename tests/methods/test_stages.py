"""Plans as data: the checks on a plan, and a new two-stage method that needs nothing but its own class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.recipe import load_recipe
from weakseg.losses import PartialCrossEntropy
from weakseg.methods import METHODS, Fit, Method, PseudoLabel, Relabel, Stage, Train
from weakseg.methods.stages import check_plan
from weakseg.methods.supervised import FullSupervision, sparse_target


def test_a_well_formed_plan_passes() -> None:
    plan = [
        Fit("cam"),
        PseudoLabel("pseudo", "cam"),
        Train("seg", labels_from="pseudo"),
        Relabel("relabel", "seg", labeller="spml"),
        Train("classifier", labels_from="relabel", init_from="seg"),
    ]
    assert check_plan(plan) is plan


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([Train("a"), Train("a")], "appears twice"),
        ([PseudoLabel("pseudo", "cam"), Train("seg")], "reads 'cam', which does not run before it"),
        ([Train("cam"), Train("seg", labels_from="cam")], "reads 'cam', a Train stage"),
        ([Train("a"), Relabel("b", "a"), Relabel("c", "b"), Train("d")], "reads 'b', a Relabel stage"),
        ([Train("cam"), PseudoLabel("pseudo", "cam")], "ends with a training stage"),
        ([Fit("a"), Relabel("b", "a"), Relabel("c", "b"), Train("d")], "reads 'b', a Relabel stage"),
        ([], "ends with a training stage"),
        ([Train("a"), Relabel("b", "a"), Train("c", init_from="b")], "reads 'b', a Relabel stage"),
        ([Train("a", init_from="c"), Train("c")], "reads 'c', which does not run before it"),
    ],
)
def test_a_malformed_plan_is_refused(plan: list[Stage], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_plan(plan)


class SelfTraining(Method):
    """A toy method: a teacher trained on points labels every training image; a student learns the labels densely."""

    name = "toy-self-training"
    supervisions = ("points",)

    @classmethod
    def plan(cls, supervision: str, args: object) -> list[Stage]:
        student = {"method": FullSupervision.name, "supervision": "full", "method_args": {}}
        return [
            Train("teacher"),
            Relabel("teacher-labels", source="teacher", eval={"flip": True}),
            Train("student", student, labels_from="teacher-labels"),
        ]

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = sparse_target(batch, ("points",), 2, 0, self.class_set.ignore_index)
        loss = PartialCrossEntropy(self.class_set.ignore_index)(outputs["logits"], target)
        return loss, {"pce": loss.detach()}


@pytest.mark.slow
def test_a_new_multi_stage_method_is_one_class_and_its_registration(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(METHODS, SelfTraining.name, SelfTraining)
    overrides = tiny_overrides(shapes, tmp_path, "method=toy-self-training", "supervision=points", "eval.max_images=2")
    result = Pipeline(load_recipe("full", overrides), progress=False).run()
    assert list(result.stage_wall_s) == ["teacher", "teacher-labels", "student"]
    assert len(list((tmp_path / "teacher-labels" / "labels").glob("*.png"))) == 8
    student = load_checkpoint(tmp_path / "student" / "last.pt")["recipe"]
    assert student["method"] == "full" and student["data"]["train_masks"].endswith("teacher-labels/labels")
    assert load_checkpoint(tmp_path / "teacher" / "last.pt")["recipe"]["method"] == SelfTraining.name
    assert result.final_checkpoint == tmp_path / "student" / "last.pt" and 0 <= result.metrics["miou"] <= 1
    assert result.metrics["relabel"]["config"]["eval"]["flip"] is True  # the stage's own inference settings
