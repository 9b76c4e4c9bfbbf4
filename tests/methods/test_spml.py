"""SPML: the embedding head, the classifier on the detached embedding, the loss terms, the memory bank in the
method's state, the plan (initial classifier → relabel → final classifier) and the final classifier's stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.methods.test_cam import VOC, _model
from weakseg.data.dataset import DataConfig
from weakseg.engine.trainer import set_train_mode
from weakseg.errors import ConfigError, TrainingError
from weakseg.methods import Method, PseudoLabel, Relabel, Train, build_method
from weakseg.models.segmentor import ModelConfig


def _batch(b: int = 2, size: int = 64) -> dict:
    scribble = torch.full((b, size, size), 255)
    scribble[:, 10:12, 5:40] = 0
    scribble[0, 40:42, 10:50] = 8
    scribble[1, 30:32, 20:30] = 15
    regions = torch.zeros(b, size, size, dtype=torch.long)
    regions[:, 32:] = 1
    regions[:, :, 50:] = -1  # padding
    valid = torch.ones(b, size, size, dtype=torch.bool)
    valid[:, :, 50:] = False
    return {"scribble": scribble, "points": [torch.zeros(0, 3)] * b, "regions": regions, "valid": valid}


def _spml(**args):
    model = _model()
    method = build_method("spml", {"grid": [2, 2], **args}, "scribbles", VOC)
    method.setup(model, ModelConfig(pretrained=False))
    return model, method


def test_classifier_reads_the_detached_embedding() -> None:
    torch.manual_seed(0)
    model, _ = _spml(random_walk=False)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["embedding"].shape == (2, 64, 16, 16) and out["logits"].shape == (2, VOC.num_classes, 16, 16)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2, 16, 16))
    out["logits"].sum().backward()
    assert model.heads["embedding"].net[0].weight.grad is None  # the classifier's loss never reaches the embedding
    assert all(p.grad is None for p in model.decoder.parameters())
    assert model.classifier.net[0].weight.grad.abs().sum() > 0


def test_classifier_trains_the_embedding_when_not_detached() -> None:
    torch.manual_seed(0)
    model, _ = _spml(random_walk=False, detach_classifier=False)
    model(torch.randn(2, 3, 64, 64))["logits"].sum().backward()
    assert model.heads["embedding"].net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_loss_trains_the_embedding_with_the_contrast_and_the_classifier_with_ce() -> None:
    torch.manual_seed(0)
    model, method = _spml()
    out = model(torch.randn(2, 3, 64, 64))
    loss, terms = method.loss(out, _batch())
    assert set(terms) == {"similarity", "annotation", "cooccurrence", "ce"}
    assert all(torch.isfinite(v) for v in terms.values()) and terms["annotation"] > 0
    loss.backward()
    assert model.heads["embedding"].net[0].weight.grad.abs().sum() > 0
    assert model.classifier.net[-1].weight.grad.abs().sum() > 0


def test_image_classes_are_the_foreground_labels_of_each_image() -> None:
    _, method = _spml()
    classes = method.semantic_target(_batch())[1]
    assert classes.shape == (2, VOC.num_classes - 1)
    assert classes[0].nonzero()[:, 0].tolist() == [7] and classes[1].nonzero()[:, 0].tolist() == [14]


def test_inference_is_the_classifier_alone() -> None:
    """The reference predicts with its (final) classifier only: no random walk at inference."""
    torch.manual_seed(0)
    model, _ = _spml()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(out["logits"], model.classifier.net(out["embedding"]))


def test_the_classifier_loss_is_weighted_like_the_annotation_term() -> None:
    assert _spml(annotation_weight=0.3)[1].classifier_weight() == 0.3
    assert _spml(annotation_weight=0.3, classifier_weight=2.0)[1].classifier_weight() == 2.0


def test_the_final_classifier_trains_alone_on_the_frozen_embedding() -> None:
    torch.manual_seed(0)
    first, _ = _spml()
    model, method = _spml(classifier_only=True)
    method.initialise(model, first.state_dict())
    before = first.state_dict()
    for name, value in model.state_dict().items():
        assert name.startswith("classifier.") or torch.equal(value, before[name]), name
    assert not torch.equal(model.classifier.net[0].weight, first.classifier.net[0].weight)  # a new classifier
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("classifier.")
    }
    set_train_mode(model, "batch")
    assert model.classifier.training and not model.backbone.training and not model.decoder.training
    assert not model.heads["embedding"].training
    assert method.label_kinds() == ("mask",) and method.prepare_sample("sample") == "sample"
    mask = torch.full((2, 64, 64), 255)
    mask[:, :20] = 3
    out = model(torch.randn(2, 3, 64, 64))
    loss, terms = method.loss(out, {"mask": mask})
    torch.testing.assert_close(loss, F.cross_entropy(F.interpolate(out["logits"], 64, mode="bilinear"), mask,
                                                     ignore_index=255), rtol=1e-4, atol=1e-5)  # fmt: skip
    assert set(terms) == {"ce"}


def test_memory_bank_travels_in_the_method_state() -> None:
    torch.manual_seed(0)
    model, method = _spml()
    for _ in range(3):
        method.loss(model(torch.randn(2, 3, 64, 64)), _batch())
    state = method.state_dict()
    assert len(state["bank._extra_state"]) == 2
    _, fresh = _spml()
    fresh.load_state_dict(state)
    for got, want in zip(fresh.contrast.bank.entries, method.contrast.bank.entries, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_regions_come_from_the_cache_once_bound(tmp_path: Path) -> None:
    from weakseg.data.sample import Sample

    _, method = _spml()
    sample = Sample("x", torch.randint(0, 255, (20, 30, 3), dtype=torch.uint8).numpy())
    with pytest.raises(TrainingError, match="not set up"):
        method.prepare_sample(sample)
    method.bind(DataConfig(root=str(tmp_path)), tmp_path / "run", num_images=1)
    assert method.prepare_sample(sample).maps["regions"].shape == (20, 30)
    assert len(list((tmp_path / "run" / "regions").glob("*/x.png"))) == 1


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="oversegment.method"):
        build_method("spml", {"oversegment": {"method": "ucm"}}, "points", VOC)
    with pytest.raises(ConfigError, match="method_args.annotation_wieght"):
        build_method("spml", {"annotation_wieght": 1}, "points", VOC)
    with pytest.raises(ConfigError, match="trains from tags, boxes, points, scribbles, mixed"):
        build_method("spml", None, "full", VOC)
    with pytest.raises(ConfigError, match="cam_method must be one of cam, hfpl, ppc, probe, seam"):
        build_method("spml", {"cam_method": "pce"}, "tags", VOC)


def stage_names(method: Method) -> list[str]:
    return [stage.name for stage in method.plan(method.supervision, method.args)]


def test_tags_and_boxes_train_on_pseudo_labels_after_a_cam_stage() -> None:
    args = {"cam_method": "seam", "cam_args": {"view_size": 64}, "final_classifier": False}
    method = build_method("spml", args, "boxes", VOC)
    plan = method.plan(method.supervision, method.args)
    assert stage_names(method) == ["cam", "pseudo", "seg"] and method.label_kinds() == ("mask", "boxes")
    assert plan[0].overlay == {"method": "seam", "method_args": {"view_size": 64}}
    assert plan[1] == PseudoLabel("pseudo", source="cam") and plan[2] == Train("seg", labels_from="pseudo")
    assert stage_names(build_method("spml", {"final_classifier": False}, "points", VOC)) == ["seg"]


@pytest.mark.parametrize("supervision", ["points", "scribbles", "tags", "boxes", "mixed"])
def test_the_initial_classifier_relabels_and_a_final_classifier_learns_the_labels(supervision: str) -> None:
    method = build_method("spml", {"random_walk": True}, supervision, VOC)
    *first, relabel, final = method.plan(method.supervision, method.args)
    assert first[-1].name == "seg" and (supervision in ("points", "scribbles")) == (len(first) == 1)
    assert relabel == Relabel("relabel", source="seg", eval={"crf": True}, labeller="spml")
    assert final.name == "classifier" and final.labels_from == "relabel" and final.init_from == "seg"
    assert final.overlay["method_args"]["classifier_only"] is True
    assert final.overlay["method_args"]["annotation_weight"] == method.args.annotation_weight
    no_walk = build_method("spml", {"random_walk": False, "relabel_crf": False}, supervision, VOC)
    relabel = no_walk.plan(supervision, no_walk.args)[-2]
    assert relabel.labeller == "spml-no-walk" and relabel.eval == {"crf": False}


def test_boxes_give_the_co_occurrence_context_of_the_crop() -> None:
    torch.manual_seed(0)
    model = _model()
    method = build_method("spml", {"grid": [2, 2]}, "boxes", VOC)
    method.setup(model, ModelConfig(pretrained=False))
    batch = _batch()
    # Pseudo-labels (255 = ignore), with a background band wide enough to survive the stride-4 sampling.
    batch["mask"] = batch.pop("scribble").index_fill(1, torch.arange(8, 16), 0)
    batch["boxes"] = [torch.tensor([[0.0, 0.0, 9.0, 9.0, 8.0]]), torch.tensor([[1.0, 1.0, 5.0, 5.0, 15.0]])]
    batch["tags"] = torch.zeros(2, VOC.num_classes)
    loss, terms = method.loss(model(torch.randn(2, 3, 64, 64)), batch)
    assert torch.isfinite(loss) and terms["annotation"] > 0 and terms["cooccurrence"] > 0


def test_mixed_supervision_uses_each_image_s_own_sparse_labels_else_its_pseudo_labels() -> None:
    method = build_method("spml", {"scribble_radius": 0}, "mixed", VOC)
    assert stage_names(method) == ["cam", "pseudo", "seg", "relabel", "classifier"]
    assert method.label_kinds() == ("mask", "tags", "boxes", "points", "scribbles")
    batch = _batch()
    batch["mask"] = torch.full((2, 64, 64), 3)  # pseudo-labels: class 3 everywhere
    batch["tags"] = torch.zeros(2, VOC.num_classes)
    batch["tags"][1, 12] = 1
    batch["boxes"] = [torch.zeros(0, 5)] * 2
    batch["has"] = {
        "tags": torch.tensor([False, True]), "boxes": torch.tensor([False, False]),
        "points": torch.tensor([False, False]), "scribbles": torch.tensor([True, False]),
    }  # fmt: skip
    target, classes = method.semantic_target(batch)
    assert torch.equal(target[0], batch["scribble"][0]) and (target[1] == 3).all()
    assert classes[0].nonzero()[:, 0].tolist() == [7] and classes[1].nonzero()[:, 0].tolist() == [11]
