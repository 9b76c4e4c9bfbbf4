"""SPML from points and scribbles: the embedding head, the classifier on the detached embedding, the random-walk
refinement at inference, the loss terms, the memory bank in the method's state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.methods.test_cam import VOC, _model
from weakseg.data.dataset import DataConfig
from weakseg.errors import ConfigError, TrainingError
from weakseg.methods import Method, PseudoLabel, Relabel, Train, build_method
from weakseg.models.segmentor import ModelConfig
from weakseg.pseudo.random_walk import RandomWalk


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


def test_inference_refines_the_classifier_by_the_random_walk() -> None:
    torch.manual_seed(0)
    model, _ = _spml()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
        raw = model.classifier.net(out["embedding"])
        probs = F.avg_pool2d(raw.softmax(1), 2)
        walked = RandomWalk()(probs, F.avg_pool2d(out["embedding"], 2))
        want = F.interpolate(walked, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["logits"].softmax(1), want / want.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out["logits"].softmax(1), raw.softmax(1), atol=1e-3)


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
    with pytest.raises(ConfigError, match="rounds must be 1, or 2 for tags / boxes / mixed"):
        build_method("spml", {"rounds": 2}, "points", VOC)


def stage_names(method: Method) -> list[str]:
    return [stage.name for stage in method.plan(method.supervision, method.args)]


def test_tags_and_boxes_train_on_pseudo_labels_after_a_cam_stage() -> None:
    method = build_method("spml", {"cam_method": "seam", "cam_args": {"view_size": 64}}, "boxes", VOC)
    plan = method.plan(method.supervision, method.args)
    assert stage_names(method) == ["cam", "pseudo", "seg"] and method.label_kinds() == ("mask", "boxes")
    assert plan[0].overlay == {"method": "seam", "method_args": {"view_size": 64}}
    assert plan[1] == PseudoLabel("pseudo", source="cam") and plan[2] == Train("seg", labels_from="pseudo")
    assert stage_names(build_method("spml", None, "points", VOC)) == ["train"]
    two = build_method("spml", {"rounds": 2}, "tags", VOC)
    assert stage_names(two) == ["cam", "pseudo", "seg", "relabel", "seg2"]
    *_, relabel, seg2 = two.plan(two.supervision, two.args)
    assert relabel == Relabel("relabel", source="seg", eval={"crf": True})
    assert seg2.labels_from == "relabel"


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
    assert stage_names(method) == ["cam", "pseudo", "seg"]
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
