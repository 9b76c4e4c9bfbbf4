"""The rloss method: partial CE first, then partial CE + the regularized losses."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.data.classes import VOC
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import ConfigError
from weakseg.losses import DenseCRFLoss, EntropyLoss, NormalizedCutLoss
from weakseg.methods import build_method


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    scribble = torch.full((2, 16, 16), 255)
    scribble[:, 3, 2:10] = 0
    scribble[:, 12, 4:12] = 15
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[1, :, 12:] = False
    image = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    return {"scribble": scribble, "points": [torch.zeros(0, 3)] * 2, "image": image, "valid": valid}


def test_phase_one_is_partial_ce_alone_and_phase_two_adds_the_regularisers() -> None:
    args = {"crf_weight": 1e-5, "nc_weight": 0.3, "entropy_weight": 0.2, "kernel": "exact", "scale_factor": 1.0}
    method = build_method("rloss", {**args, "regularizer_start": 0.5}, "scribbles", VOC)
    pce = build_method("pce", {}, "scribbles", VOC)
    logits = torch.randn(2, 21, 8, 8, generator=torch.Generator().manual_seed(1))
    outputs, batch = {"logits": logits}, _batch()
    method.begin_step(4, 10)
    loss, terms = method.loss(outputs, batch)
    torch.testing.assert_close(loss, pce.loss(outputs, batch)[0])
    assert set(terms) == {"pce"}

    method.begin_step(5, 10)
    loss, terms = method.loss(outputs, batch)
    assert set(terms) == {"pce", "crf", "nc", "entropy"}
    probs = torch.softmax(logits, 1)
    expected = (
        pce.loss(outputs, batch)[0]
        + DenseCRFLoss(1e-5, kernel="exact", scale_factor=1.0)(probs, batch["image"], batch["valid"])
        + NormalizedCutLoss(0.3, kernel="exact", scale_factor=1.0)(probs, batch["image"], batch["valid"])
        + EntropyLoss(0.2)(probs, batch["valid"])
    )
    torch.testing.assert_close(loss, expected)


def test_zero_weights_leave_terms_out() -> None:
    method = build_method("rloss", {"regularizer_start": 0.0, "kernel": "local", "window": 3}, "points", VOC)
    method.begin_step(0, 10)
    batch = {**_batch(), "points": [torch.tensor([[3.0, 4.0, 5.0]])] * 2}
    _, terms = method.loss({"logits": torch.randn(2, 21, 8, 8)}, batch)
    assert set(terms) == {"pce", "crf"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"kernel": "grid"}, "kernel"),
        ({"regularizer_start": 1.5}, "regularizer_start"),
        ({"scale_factor": 0.0}, "scale_factor"),
        ({"window": 4}, "window"),
    ],
)
def test_bad_arguments_are_config_errors(args: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_method("rloss", args, "points", VOC)


@pytest.mark.parametrize("supervision", ["points", "scribbles"])
@pytest.mark.parametrize(("start", "with_crf"), [(None, [False, False, True, True]), (0.0, [True] * 4)])
def test_recipes_train_with_the_crf_from_the_start_or_in_a_second_phase(
    shapes, tmp_path, supervision: str, start: float | None, with_crf: list[bool]
) -> None:
    """The recipes train the lecture's two phases (steps 0, 1 | 2, 3, 0-based); regularizer_start=0 gives the
    reference's PyTorch port, with the CRF term from the first step."""
    extra = [f"method_args.regularizer_start={start}"] if start is not None else []
    overrides = tiny_overrides(
        shapes, tmp_path / supervision, "train.steps=4", "method_args.kernel=permutohedral", *extra
    )
    recipe = load_recipe([f"rloss-{supervision}"], overrides)
    assert recipe.method == "rloss" and recipe.method_args["regularizer_start"] == (0.5 if start is None else start)
    trainer = Trainer(recipe, progress=False)
    trainer.fit()
    steps = [row for row in trainer.history if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    assert ["crf" in row for row in steps] == with_crf
    assert all(row["crf"] < 0 and row["loss"] < row["pce"] for row in steps if "crf" in row)


def test_crf_and_nc_share_one_filtering(monkeypatch: pytest.MonkeyPatch) -> None:
    from weakseg.losses.regularized import BilateralKernel

    calls = []
    apply = BilateralKernel.apply
    monkeypatch.setattr(BilateralKernel, "apply", lambda self, *a: calls.append(a[0].shape[1]) or apply(self, *a))
    method = build_method("rloss", {"regularizer_start": 0.0, "nc_weight": 1.0}, "scribbles", VOC)
    method.begin_step(0, 10)
    _, terms = method.loss({"logits": torch.randn(2, 21, 8, 8)}, _batch())
    assert set(terms) == {"pce", "crf", "nc"} and calls == [22]  # 21 classes + the ROI, filtered once
