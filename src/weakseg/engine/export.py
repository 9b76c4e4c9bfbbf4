"""``weakseg export``: a checkpoint's segmentation model as ONNX or TorchScript, uint8 images in, probabilities out.

The exported graph is :class:`ExportedSegmenter`: it normalises uint8 RGB images itself and returns the class
probabilities ``weakseg predict`` takes the arg-max of at one scale without flip, window or CRF (softmax of the
logits at the decoder's stride, upsampled bilinearly to the image), so its arg-max is that command's label map.

Batch, height and width are dynamic. The ONNX file comes from the TorchScript-based exporter (``dynamo=False``):
with timm's ``tf_efficientnet_lite0`` ("same" padding, computed from the input size) it keeps every axis dynamic,
odd sizes included, and exports in seconds, while the dynamo exporter (torch 2.14) took over five minutes on two
cores and specialised the batch axis to the example's size 1. A model whose forward loops over the batch in Python
(SPML's random walk at inference) would have that loop unrolled for the example's batch size; such a model is
exported as a loop over the batch of a trace made on one image (``"batching": "per-image"`` in the sidecar).
Before anything is written, the exported model (in onnxruntime when it is installed) runs on a batch of two images
of another, odd size and must agree with PyTorch.
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg import __version__
from weakseg.data.classes import ClassSet
from weakseg.data.formats import atomic_write, write_json
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.errors import ConfigError
from weakseg.methods import METHODS
from weakseg.models import SegmentationModel

__all__ = ["FORMATS", "ExportedSegmenter", "export_checkpoint", "sidecar_path"]

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "probs"
DYNAMIC_AXES = {name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, OUTPUT_NAME)}
OPSETS = range(11, 21)  # 11: Pad with input-dependent sizes (timm's "same" padding); 20: the exporter's newest
MIN_EXAMPLE_SIZE = 64
TOLERANCE = 1e-3  # largest accepted |probability difference| between the exported model and PyTorch


class ExportedSegmenter(nn.Module):
    """uint8 B×3×H×W RGB images → float32 B×K×H×W class probabilities (softmax over K at the decoder's stride,
    upsampled bilinearly to H×W); the arg-max over K is ``weakseg predict``'s label map at one scale.

    Normalises as :func:`weakseg.engine.device.normalize` does, with mean and std as buffers: a trace of ``normalize``
    would fix the device its constants are made on, and the TorchScript file would run on the CPU only.
    """

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model
        mean, std = model.mean_std
        # Two shapes that broadcast alike: equal buffers (lite0's mean and std are both 0.5) make onnxruntime try to
        # merge them, and warn that it cannot inside the per-image loop.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        logits = self.model((images.float() / 255.0 - self.mean) / self.std)["logits"]
        return F.interpolate(logits.float().softmax(1), size=images.shape[-2:], mode="bilinear", align_corners=False)


class _PerImage(nn.Module):
    """A batch run one image at a time through a trace made on one image (for forwards that loop over the batch)."""

    def __init__(self, single: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.single = single

    def forward(self, images: Tensor) -> Tensor:
        return torch.cat([self.single(images[i : i + 1]) for i in range(images.shape[0])])


def sidecar_path(out: Path) -> Path:
    """The JSON description written next to an exported model: ``<out>.json``."""
    return out.with_name(out.name + ".json")


def _images(batch: int, height: int, width: int, seed: int) -> Tensor:
    return torch.randint(
        0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _agreement(got: Tensor, want: Tensor) -> dict:
    """How closely exported probabilities match PyTorch's: the largest difference and the share of equal arg-maxes."""
    if got.shape != want.shape:
        return {"max_abs_diff": float("inf"), "argmax_agreement": 0.0, "shape": list(got.shape)}
    return {
        "max_abs_diff": (got - want).abs().max().item(),
        "argmax_agreement": (got.argmax(1) == want.argmax(1)).double().mean().item(),
    }


def _agrees(check: dict) -> bool:
    return check["max_abs_diff"] <= TOLERANCE


def _script(
    wrapper: ExportedSegmenter, example: Tensor, probe: Tensor, want: Tensor
) -> tuple[torch.jit.ScriptModule, str]:
    """A trace of ``wrapper`` on ``example`` (one image), or a scripted per-image loop over it when the trace does
    not carry over to ``probe``'s batch of two; the second item names which ("vectorised" or "per-image")."""
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    if _agrees(_agreement(traced(probe), want)):
        return traced, "vectorised"
    looped = torch.jit.script(_PerImage(traced))
    check = _agreement(looped(probe), want)
    if not _agrees(check):
        raise RuntimeError(f"the traced model does not reproduce PyTorch on {tuple(probe.shape)} inputs ({check})")
    return looped, "per-image"


def _onnx(
    module: torch.jit.ScriptModule, example: Tensor, probe: Tensor, want: Tensor, opset: int
) -> tuple[bytes, dict]:
    """The ONNX bytes of ``module``, checked with ``onnx.checker``, and its agreement on ``probe`` in onnxruntime."""
    import onnx
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=DYNAMIC_AXES,
        opset_version=opset,
        # torch < 2.5 has only this exporter and no ``dynamo`` argument; torch ≥ 2.9 defaults to the dynamo one
        **({"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}),
    )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {INPUT_NAME: probe.numpy()})[0])
    return data, {"runtime": f"onnxruntime {ort.__version__}", **_agreement(got, want)}


def _torchscript(module: torch.jit.ScriptModule, probe: Tensor, want: Tensor) -> tuple[bytes, dict]:
    """The saved bytes of ``module`` and the agreement on ``probe`` of the module loaded back from them."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    data = buffer.getvalue()
    loaded = torch.jit.load(io.BytesIO(data))
    return data, {"runtime": f"torch.jit {torch.__version__}", **_agreement(loaded(probe), want)}


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, fmt: str = "onnx", opset: int = 17, example_size: int = 256
) -> Path:
    """Write ``checkpoint``'s model to ``out`` as ``fmt`` (``onnx`` or ``torchscript``) and its description to
    ``<out>.json``; return ``out``.

    The model is traced on one ``example_size``² image; the file is written (atomically) only once the exported model
    matched PyTorch on two images of another size (for ONNX: in onnxruntime when it is installed, else the
    ``onnx.checker`` alone). CAM learners (the first stage of a tags / boxes pipeline) have no segmentation output
    and are refused.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown export format (available: {', '.join(FORMATS)})")
    if fmt == "onnx" and opset not in OPSETS:
        raise ConfigError(f"--opset {opset}: ONNX export supports opsets {OPSETS[0]} to {OPSETS[-1]}")
    if example_size < MIN_EXAMPLE_SIZE:
        raise ConfigError(f"example_size {example_size}: must be at least {MIN_EXAMPLE_SIZE} pixels")
    model, recipe, state = load_model_from_checkpoint(checkpoint, torch.device("cpu"))
    if METHODS[recipe.method].output != "segmentation":
        raise ConfigError(
            f"{checkpoint}: a '{recipe.method}' checkpoint is a CAM learner with no segmentation output to export; "
            "export the segmentation stage's checkpoint (e.g. <run>/seg/last.pt) instead"
        )
    class_set = ClassSet.from_dict(state["class_set"])
    wrapper = ExportedSegmenter(model).eval()
    example = _images(1, example_size, example_size, seed=0)
    probe = _images(2, example_size * 3 // 4 + 1, example_size * 5 // 4 + 1, seed=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter warnings: the probe below checks what they warn about
        want = wrapper(probe)
        module, batching = _script(wrapper, example, probe, want)
        if fmt == "onnx":
            data, check = _onnx(module, example, probe, want, opset)
        else:
            data, check = _torchscript(module, probe, want)
    if not _agrees(check):
        raise RuntimeError(f"the exported model does not reproduce PyTorch on {tuple(probe.shape)} inputs ({check})")
    atomic_write(out, lambda f: f.write(data))
    num_classes = class_set.num_classes
    write_json(
        sidecar_path(out),
        {
            "file": out.name,
            "format": fmt,
            **({"opset": opset} if fmt == "onnx" else {}),
            "checkpoint": str(checkpoint.resolve()),
            "step": state["step"],
            "method": recipe.method,
            "supervision": recipe.supervision,
            "backbone": recipe.model.backbone,
            "classes": class_set.to_dict(),
            "input": {
                "name": INPUT_NAME,
                "dtype": "uint8",
                "shape": ["batch", 3, "height", "width"],
                "description": "RGB images, B×3×H×W, values 0–255; any batch size, height and width",
            },
            "output": {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "shape": ["batch", num_classes, "height", "width"],
                "description": "class probabilities at every pixel (softmax at the model's stride, upsampled "
                "bilinearly); arg-max over axis 1 = class ids of classes.names",
            },
            "batching": batching,
            "verified": {"input_shape": list(probe.shape), **check},
            "exported_with": {"weakseg": __version__, "torch": torch.__version__},
        },
    )
    return out
