"""How closely an exported model reproduces ``weakseg predict`` on real photos, at their native sizes.

    python -m benchmarks.export_parity CHECKPOINT [--data-root ../shared/data] [--images DIR] [--count 50]

Exports CHECKPOINT to ONNX and TorchScript (``weakseg.engine.export``, into a temporary folder), runs the first
``--count`` images of ``--images`` (default: voc454's photos under ``--data-root``) one at a time through onnxruntime
(CPU) and ``torch.jit.load``, and compares each output with the probabilities PyTorch's own prediction path gives
(``predict_probs`` at one scale, no flip). Prints, per format, the largest absolute probability difference over all
pixels and classes, the mean of the per-image largest differences, and the share of pixels whose arg-max class
agrees.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from benchmarks.common import entry_point
from weakseg.data.formats import read_image
from weakseg.engine.checkpoint import load_model_from_checkpoint
from weakseg.engine.device import normalize
from weakseg.engine.export import export_checkpoint
from weakseg.engine.inference import predict_probs

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("export_parity", __doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=Path, default=None, help="a folder of .jpg photos")
    parser.add_argument("--count", type=int, default=50)
    args = parser.parse_args(argv)
    images = args.images or args.data_root / "voc454" / "JPEGImages"
    paths = sorted(images.glob("*.jpg"))[: args.count]
    model, recipe, state = load_model_from_checkpoint(args.checkpoint, torch.device("cpu"))
    mean, std = model.mean_std
    with tempfile.TemporaryDirectory() as tmp:
        files = {fmt: export_checkpoint(args.checkpoint, Path(tmp) / f"model{SUFFIX[fmt]}", fmt) for fmt in SUFFIX}
        session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(files["torchscript"])
        runners = {
            "onnx": lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0]),
            "torchscript": scripted,
        }
        diffs: dict[str, list[float]] = {fmt: [] for fmt in SUFFIX}
        agree = dict.fromkeys(SUFFIX, 0)
        pixels = 0
        sizes = set()
        with torch.no_grad():
            for path in paths:
                images = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]
                sizes.add(tuple(images.shape[-2:]))
                want = predict_probs(lambda x: model(x)["logits"], normalize(images, mean, std))
                pixels += want[:, 0].numel()
                for fmt, run in runners.items():
                    got = run(images)
                    diffs[fmt].append((got - want).abs().max().item())
                    agree[fmt] += (got.argmax(1) == want.argmax(1)).sum().item()
    print(
        f"{args.checkpoint}: {recipe.method} / {recipe.supervision}, {recipe.model.backbone}, step {state['step']}; "
        f"{len(paths)} images of {images} at {', '.join(f'{h}×{w}' for h, w in sorted(sizes))}; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    for fmt in SUFFIX:
        print(
            f"  {fmt:11s} max |Δp| {max(diffs[fmt]):.2e}  mean per-image max |Δp| {sum(diffs[fmt]) / len(paths):.2e}  "
            f"arg-max agreement {agree[fmt] / pixels:.6%} ({pixels - agree[fmt]} of {pixels} pixels differ)"
        )


if __name__ == "__main__":
    main()
