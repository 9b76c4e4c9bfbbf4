"""Export: ONNX (onnxruntime) and TorchScript files reproduce weakseg's own prediction on real and generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA, needs_voc454, tiny_overrides
from weakseg.data.formats import read_image
from weakseg.engine import export
from weakseg.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from weakseg.engine.device import normalize
from weakseg.engine.export import export_checkpoint, sidecar_path
from weakseg.engine.inference import predict_probs
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import ConfigError, TrainingError
from weakseg.models.heads import EmbeddingClassifier

EXAMPLE_SIZE = 96  # traced at 96², checked on 64² shapes images and ~500×375 VOC photos
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def _train(shapes: Path, out: Path, recipe: str, *extra: str) -> Path:
    Trainer(load_recipe(recipe, tiny_overrides(shapes, out, "train.steps=1", *extra)), progress=False).fit()
    return out / "last.pt"


@pytest.fixture(scope="module")
def checkpoint(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(shapes, tmp_path_factory.mktemp("full"), "full")


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint exported in both formats."""
    out = tmp_path_factory.mktemp("exported")
    return {
        fmt: export_checkpoint(checkpoint, out / f"model{SUFFIX[fmt]}", fmt, example_size=EXAMPLE_SIZE)
        for fmt in FORMATS
    }


def _run(path: Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """The exported model's output for uint8 B×3×H×W ``images``, in onnxruntime or TorchScript."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(path)(images)


def _reference(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    """What ``weakseg predict`` computes (one scale, no flip): its probabilities, from the checkpoint itself."""
    model, _, _ = load_model_from_checkpoint(checkpoint, torch.device("cpu"))
    mean, std = model.mean_std
    return predict_probs(lambda x: model(x)["logits"], normalize(images, mean, std))


def _assert_parity(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4
    assert (got.argmax(1) == want.argmax(1)).double().mean().item() >= 0.999


def _batch(paths: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in paths])


def _shapes_images(shapes: Path) -> torch.Tensor:
    ids = (shapes / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return _batch([shapes / "JPEGImages" / f"{i}.png" for i in ids])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_model_matches_pytorch_on_generated_images(
    shapes: Path, checkpoint: Path, exported: dict[str, Path], fmt: str
) -> None:
    images = _shapes_images(shapes)  # a batch of 3 (the trace saw 1), 64×64 (it saw 96×96)
    assert images.shape[0] == 3 and images.shape[-2:] != (EXAMPLE_SIZE, EXAMPLE_SIZE)
    _assert_parity(_run(exported[fmt], fmt, images), _reference(checkpoint, images))


@pytest.mark.slow
@needs_voc454
@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_model_matches_pytorch_on_voc_photos(checkpoint: Path, exported: dict[str, Path], fmt: str) -> None:
    path = exported[fmt]
    photos = _batch(sorted((SHARED_DATA / "voc454" / "JPEGImages").glob("*.jpg"))[:2])
    assert photos.shape == (2, 3, 375, 500)  # voc454's photos are all 500×375
    for images in (photos, photos[:1].transpose(2, 3).contiguous()):  # landscape pair, then one portrait
        _assert_parity(_run(path, fmt, images), _reference(checkpoint, images))


@pytest.mark.parametrize("fmt", FORMATS)
def test_sidecar_describes_the_model(checkpoint: Path, exported: dict[str, Path], fmt: str) -> None:
    path = exported[fmt]
    meta = json.loads(sidecar_path(path).read_text())
    state = load_checkpoint(checkpoint)
    assert meta["file"] == path.name and meta["format"] == fmt and meta["step"] == 1
    assert meta["classes"] == state["class_set"]
    assert (meta["method"], meta["supervision"]) == ("full", "full")
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["batch", 3, "height", "width"]
    assert meta["output"]["shape"] == ["batch", len(state["class_set"]["names"]), "height", "width"]
    assert meta["batching"] == "vectorised"
    assert meta["verified"]["max_abs_diff"] <= export.TOLERANCE and meta["verified"]["input_shape"][0] == 2
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no temporary files left


@pytest.fixture(scope="module")
def spml_checkpoint(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spml")
    return _train(shapes, out, "spml-points", f"method_args.region_cache={out / 'regions'}")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_forward_that_loops_over_the_batch_is_exported_per_image(
    shapes: Path, spml_checkpoint: Path, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head that runs image by image in Python (here SPML's classifier, made to loop): a plain trace would keep only
    the example's one image."""

    def looped(self: EmbeddingClassifier, embedding: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(embedding[i : i + 1]) for i in range(embedding.shape[0])])

    monkeypatch.setattr(EmbeddingClassifier, "forward", looped)
    path = export_checkpoint(spml_checkpoint, tmp_path / f"spml{SUFFIX[fmt]}", fmt, example_size=EXAMPLE_SIZE)
    assert json.loads(sidecar_path(path).read_text())["batching"] == "per-image"
    images = _shapes_images(shapes)
    _assert_parity(_run(path, fmt, images), _reference(spml_checkpoint, images))
    assert fmt == "onnx" or _fixes_no_device(path)


def _fixes_no_device(path: Path) -> bool:
    """No device constant in a TorchScript file's graph: ``.to("cuda")`` moves all of it (a trace of
    ``normalize()`` would pin its mean and std to the CPU)."""
    return "Device" not in str(torch.jit.load(path).inlined_graph)


def test_the_torchscript_file_fixes_no_device(exported: dict[str, Path]) -> None:
    assert _fixes_no_device(exported["torchscript"])


def test_a_model_that_does_not_reproduce_pytorch_is_not_written(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference is small enough
    with pytest.raises(RuntimeError, match="does not reproduce PyTorch"):
        export_checkpoint(checkpoint, tmp_path / "model.pt", "torchscript", example_size=EXAMPLE_SIZE)
    assert list(tmp_path.iterdir()) == []


def test_a_cam_learner_is_refused(shapes: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(shapes, tmp_path, "stages.cam.train.steps=1")
    Trainer(Pipeline(load_recipe("cam-tags", overrides), progress=False).stage_recipe("cam"), progress=False).fit()
    with pytest.raises(ConfigError, match=r"cam/last\.pt: a 'cam' checkpoint is a CAM learner with no segmentation"):
        export_checkpoint(tmp_path / "cam" / "last.pt", tmp_path / "cam.pt", "torchscript")
    assert not (tmp_path / "cam.pt").exists()


def test_bad_arguments_and_checkpoints_are_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--format tflite: unknown export format \\(available: onnx, torchscript\\)"):
        export_checkpoint(checkpoint, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ConfigError, match="--opset 9: ONNX export supports opsets 11 to 20"):
        export_checkpoint(checkpoint, tmp_path / "m.onnx", "onnx", opset=9)
    with pytest.raises(ConfigError, match="example_size 16: must be at least 64"):
        export_checkpoint(checkpoint, tmp_path / "m.pt", "torchscript", example_size=16)
    with pytest.raises(TrainingError, match="nope.pt: checkpoint not found"):
        export_checkpoint(tmp_path / "nope.pt", tmp_path / "m.pt", "torchscript")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(TrainingError, match="corrupt.pt: checkpoint is corrupt"):
        export_checkpoint(corrupt, tmp_path / "m.pt", "torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt"]


@pytest.mark.slow
def test_the_cli_exports_a_run_folder_and_reports_mistakes(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from weakseg.cli import main

    out = tmp_path / "model.pt"
    assert main(["export", str(checkpoint.parent), "--format", "torchscript", "--out", str(out), "-q"]) == 0
    assert out.is_file() and json.loads(sidecar_path(out).read_text())["verified"]
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx"), "-q"]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
