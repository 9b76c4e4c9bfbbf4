"""The contract every registered method keeps, for every supervision it accepts (timm's / smp's registry tests): it
builds from its defaults, gives a finite loss whose gradient reaches the model, round-trips its state through a
checkpoint, and plans stages the pipeline runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.data.dataset import resolve_class_set, voc_layout
from weakseg.data.simulate import mix_labels
from weakseg.engine.device import move_batch, normalize
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.methods import METHODS, build_method
from weakseg.methods.stages import ModelStage, check_plan

CASES = [(name, supervision) for name in sorted(METHODS) for supervision in METHODS[name].supervisions]
SMALL_VIEW = {"seam": ["method_args.view_size=32"], "ppc": ["method_args.view_size=32"]}  # the 48² crop's half


def _recipe_overrides(shapes: Path, out: Path, name: str, supervision: str) -> list[str]:
    """The method on the shapes data; mixed supervision: the train images dealt one of its kinds each."""
    extra = [f"method={name}", f"supervision={supervision}", *SMALL_VIEW.get(name, [])]
    extra += [f"method_args.{field}={out / field}" for field in ("region_cache", "blot_cache")
              if field in METHODS[name].Args.__dataclass_fields__]  # fmt: skip
    if supervision == "mixed":
        method = build_method(name, None, supervision, resolve_class_set(voc_layout(shapes, classes="classes.yaml")))
        mix_labels(shapes / "labels", out / "mixed", method.mixed_kinds(), seed=0)
        extra.append(f"data.labels={out / 'mixed'}")
    return tiny_overrides(shapes, out, *extra)


def _equal(a: object, b: object) -> bool:
    """Nested states equal, tensors by value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


@pytest.mark.parametrize(("name", "supervision"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_registered_method_keeps_the_contract(shapes: Path, tmp_path: Path, name: str, supervision: str) -> None:
    recipe = load_recipe("full", _recipe_overrides(shapes, tmp_path, name, supervision))

    # Its plan is one the pipeline runs: checked, and every stage's recipe builds.
    pipeline = Pipeline(recipe, progress=False)
    assert check_plan(pipeline.plan) == pipeline.plan
    first_model = next(i for i, s in enumerate(pipeline.plan) if isinstance(s, ModelStage))
    if first_model:  # labelling stages that need no model (box priors) run before it: its labels come from them
        pipeline.run(until=pipeline.names[first_model - 1])
    first = pipeline.stage_recipe(pipeline.names[first_model])
    assert [pipeline.stage_recipe(stage).method for stage in pipeline.names]

    # A step of its first model stage: finite loss, finite terms, gradient in the model.
    trainer = Trainer(first, progress=False)
    method, model = trainer.method, trainer.model
    batch = move_batch(next(iter(trainer._loader())), trainer.device)
    method.begin_step(3, 4)  # late in the schedule: losses that start part-way (rloss's regularisers) take part
    loss, terms = method.loss(method.forward(model, normalize(batch["image"], *model.mean_std)), batch)
    assert torch.isfinite(loss), terms
    assert all(torch.isfinite(torch.as_tensor(value)).all() for value in terms.values()), terms
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    # Its state survives a checkpoint (weights_only) into a fresh instance.
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_method(first.method, first.method_args, first.supervision, trainer.class_set)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert _equal(fresh.state_dict(), method.state_dict())


def test_every_method_and_supervision_is_covered() -> None:
    assert {name for name, _ in CASES} == set(METHODS) and len(CASES) >= len(METHODS)
