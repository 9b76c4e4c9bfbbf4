"""Training-step speed: what a step costs, what the speed options buy, and what each method's loss adds to it.

    python -m benchmarks.speed step [--steps 8] [--batch 8] [--crop 256]
    python -m benchmarks.speed cam [--steps 6] [--batch 8] [--crop 256]
    python -m benchmarks.speed spml [--steps 4] [--baseline REV]
    python -m benchmarks.speed rloss [--repeats 5] [--batch 8] [--size 320]
    python -m benchmarks.speed boxes [--steps 6]
    python -m benchmarks.speed scaling [--dataset voc454] [--processes 1 2] [--steps 30] [--device cpu|cuda]

Common options, before the subcommand: ``--data-root`` (the benchmark data, default ``../shared/data``) and
``--out DIR`` (also write the figures as ``DIR/<subcommand>.json``; ``scaling`` writes ``<device>-<dataset>.json``,
by default under ``benchmarks/results/scaling``). Every figure but ``scaling``'s is a median from
:func:`benchmarks.common.median_seconds`: one warm-up round, then the compared calls take their turns, in one
process, so that the ratios within a run hold on a shared machine.

- ``step``: the data-loading cost of a batch of voc454 crops, then per model variant (NCHW against channels_last,
  ``torch.compile``, head, width, output stride) the seconds of a forward + backward + SGD step, images/s, the
  backbone's share of the step and the peak resident memory; each variant in its own process, so that its memory
  is its own.
- ``cam``: a CAM-stage step per learner (cam, seam, hfpl, ppc on seam and on hfpl) on one random batch at the
  standard shapes (second view 128²), its ratio to ``cam``, and ``PixelPrototypeContrastLoss`` alone (forward +
  backward) with its share of the ``ppc`` step.
- ``spml``: ``pce`` against ``spml`` (scribble weights), the contrast over all pixels and over 1024 per image, on 8
  augmented 256² voc454 crops with their Felzenszwalb regions and a scribble-like label (every 16th mask row);
  ``--baseline REV`` adds each ``spml`` variant again with the loss module of git revision REV.
- ``rloss``: a lite0 DeepLab-v3+ step on ``batch`` × ``size``² VOC photos against the dense CRF loss (forward +
  backward on the model's stride-4 softmax) per kernel at scale 0.5 and 1, with their ratio to the step; then the
  permutohedral loss alone at 80², 160², 320² and 640², each size in its own process, with the peak memory it adds
  (Linux). Set the thread count with OMP_NUM_THREADS.
- ``boxes``: ``pce`` (scribble-like labels, every 16th mask row) against ``boxinst`` (the real boxes) and the
  segmentation step of ``box-prior`` (cross-entropy on label maps, the masks standing in for its pseudo-labels) on 8
  augmented 256² voc454 crops, each step's ratio to ``pce``'s, and BoxInst's two box terms alone (forward + backward).
- ``scaling``: training images/s (the trainer's, start-up excluded) and peak memory of the standard ``full`` row's
  recipe, cut to ``--steps`` steps, on 1 and N processes (``torchrun`` + DistributedDataParallel); on the CPU the
  cores are shared evenly (``train.num_threads`` = cores / N).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from benchmarks.common import entry_point, median_seconds
from weakseg.bench.protocol import STANDARD
from weakseg.bench.rows import Row
from weakseg.config import to_dict
from weakseg.data.classes import ClassSet, get_class_set
from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.formats import write_json
from weakseg.data.loader import AugmentedDataset, collate, sample_to_tensors
from weakseg.data.transforms import AugmentConfig, JointTransform
from weakseg.engine.device import normalize
from weakseg.losses import DenseCRFLoss, PartialCrossEntropy
from weakseg.methods import Method, build_method
from weakseg.models import ModelConfig, SegmentationModel, build_model
from weakseg.pseudo.oversegment import OversegmentConfig, oversegment

SCALING_OUT = Path("benchmarks/results/scaling")


def build(
    method_name: str, method_args: dict, supervision: str, class_set: ClassSet
) -> tuple[SegmentationModel, Method]:
    """A randomly initialised lite0 + DeepLab-v3+ model with the method's heads, and the method."""
    model = build_model(ModelConfig(pretrained=False), class_set.num_classes)
    method = build_method(method_name, method_args, supervision, class_set)
    method.setup(model, ModelConfig(pretrained=False))
    return model.train(), method


def method_step(model: SegmentationModel, method: Method, images: torch.Tensor, batch: dict) -> Callable[[], None]:
    """One training step of ``method``: forward, loss, backward and an SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss, _ = method.loss(method.forward(model, images), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def model_step(model: SegmentationModel, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """One training step of the model's segmentation head under partial cross-entropy."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = PartialCrossEntropy()

    def step() -> None:
        loss = criterion(model(images)["logits"], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def last_json_line(cmd: list[str]) -> dict:
    """Run ``cmd`` (a run of this tool in its own process) and read the JSON of its last line."""
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------- step
STEP_VARIANTS = {
    "before: v3+ os16 NCHW": {"channels_last": False},
    "after: v3+ os16 channels_last (default)": {},
    "v3+ os16 cl + torch.compile": {"compile": True},
    "v3 os16 cl (no stride-4 skip)": {"head": "deeplabv3"},
    "v3+ os16 cl, 96 channels": {"head_channels": 96},
    "v3+ os8 cl": {"output_stride": 8},
}


def load_batch(data: Path, batch: int, crop: int) -> tuple[dict, float]:
    """A batch of augmented voc454 training crops, and the median seconds of making one."""
    dataset = SegmentationDataset(voc_layout(data), "train", kinds=("mask",), required=("mask",))
    aug = AugmentedDataset(dataset, JointTransform(AugmentConfig(crop_size=crop)), 21, seed=0)
    seconds = median_seconds({"data": lambda: collate([aug[i] for i in range(batch)])}, 3)["data"]
    return collate([aug[i] for i in range(batch)]), seconds


def step_variant(name: str, args: argparse.Namespace) -> dict:
    """One :data:`STEP_VARIANTS` model: the seconds of a training step and of the backbone alone, and peak memory."""
    torch.manual_seed(0)
    options = dict(STEP_VARIANTS[name])
    compiled = options.pop("compile", False)
    batch, _ = load_batch(args.data_root / "voc454", args.batch, args.crop)
    model = build_model(ModelConfig(**options), 21).train()
    images = normalize(batch["image"], *model.mean_std)
    step = model_step(torch.compile(model) if compiled else model, images, batch["mask"])

    def backbone_only() -> None:
        x = images.contiguous(memory_format=torch.channels_last) if model.channels_last else images
        sum(f.mean() for f in model.backbone(x)).backward()

    step_s = median_seconds({"step": step}, args.steps)["step"]
    backbone_s = median_seconds({"backbone": backbone_only}, max(2, args.steps // 2))["backbone"]
    return {"name": name, "step_s": step_s, "backbone_s": backbone_s, "peak_rss_mb": peak_rss_mb()}


def speed_step(args: argparse.Namespace) -> dict:
    if args.variant:  # one variant, in the process `speed step` started for it
        print(json.dumps(step_variant(args.variant, args)))
        return {}
    _, data_s = load_batch(args.data_root / "voc454", args.batch, args.crop)
    print(f"data: {data_s:.3f} s per batch of {args.batch} at {args.crop}² (decode + augment, one process)")
    rows = []
    for name in STEP_VARIANTS:
        cmd = [sys.executable, "-m", "benchmarks.speed", "--data-root", str(args.data_root), "step", "--variant",
               name, "--steps", str(args.steps), "--batch", str(args.batch), "--crop", str(args.crop)]  # fmt: skip
        rows.append(last_json_line(cmd))
        r = rows[-1]
        print(
            f"{name:42s} step {r['step_s']:.3f} s  {args.batch / r['step_s']:5.1f} img/s  "
            f"backbone {r['backbone_s'] / r['step_s']:4.0%} of step  peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    base = rows[0]["step_s"]
    ratios = ", ".join(f"{r['name'].split(':')[0]} {r['step_s'] / base:.2f}x" for r in rows)
    print(f"\nstep time relative to the first row (same run): {ratios}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return {"data_s": data_s, "variants": rows}


# ----------------------------------------------------------------------------------------------------------- cam
LEARNERS = {
    "cam": ("cam", {}),
    "seam": ("seam", {}),
    "hfpl": ("hfpl", {}),
    "ppc (on seam)": ("ppc", {}),
    "ppc (on hfpl)": ("ppc", {"base": "hfpl"}),
}


def speed_cam(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    voc = get_class_set("voc")
    batch = {
        "image": torch.randint(0, 256, (args.batch, 3, args.crop, args.crop), dtype=torch.uint8),
        "tags": (torch.rand(args.batch, voc.num_classes) < 0.1).float(),
        "valid": torch.ones(args.batch, args.crop, args.crop, dtype=torch.bool),
    }
    batch["tags"][:, 15] = 1.0  # every image holds a person
    images = (batch["image"].float() / 255 - 0.5) / 0.25
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, crop {args.crop}, median of {args.steps} steps")
    steps = {}
    for name, (method_name, method_args) in LEARNERS.items():
        model, method = build(method_name, method_args, "tags", voc)
        steps[name] = method_step(model, method, images, batch)
    medians = median_seconds(steps, args.steps)
    for name, seconds in medians.items():
        print(f"  {name:16s} {seconds:.3f} s/step  ×{seconds / medians['cam']:.2f} of cam")
    # The loss alone at the standard shapes: both views on the second view's grid (stride 16 at 128²).
    grid = args.crop // 32
    embeddings = [torch.randn(args.batch, 128, grid, grid).requires_grad_() for _ in range(2)]
    scores = tuple(torch.randn(args.batch, voc.num_classes - 1, grid, grid) for _ in range(2))
    loss_fn = build_method("ppc", None, "tags", voc).contrast

    def contrast() -> None:
        normalised = tuple(torch.nn.functional.normalize(e, dim=1) for e in embeddings)
        loss_fn(normalised, scores, batch["tags"][:, 1:])[0].backward()

    contrast_s = median_seconds({"contrast": contrast}, args.steps)["contrast"]
    share = 100 * contrast_s / medians["ppc (on seam)"]
    print(f"  PixelPrototypeContrastLoss alone (forward + backward): {contrast_s:.4f} s, {share:.1f}% of the ppc step")
    return {"step_s": medians, "contrast_s": contrast_s}


# ---------------------------------------------------------------------------------------------------------- spml
SPML = {"annotation_weight": 1.0, "cooccurrence_weight": 0.5, "cooccurrence_concentration": 12.0}
SPML_VARIANTS = {
    "pce": ("pce", {}),
    "spml, all pixels": ("spml", {**SPML, "contrast_pixels": None}),
    "spml, 1024 pixels per image": ("spml", {**SPML, "contrast_pixels": 1024}),
}
SPML_LOSS = "src/weakseg/losses/spml.py"


def loss_module_at(revision: str) -> ModuleType:
    """The SPML loss module as it was at git ``revision``, imported under another name."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{revision}:{SPML_LOSS}"], cwd=root, capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "spml_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("spml_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class RevisionLoss(torch.nn.Module):
    """SPML's loss as another revision's ``module`` computes it, with the settings of today's ``loss``, called as
    today's method calls its loss: it returns the total and its terms (older revisions returned the total alone, and
    had one ``Relation`` class for the four relations)."""

    def __init__(self, module: ModuleType, loss: torch.nn.Module) -> None:
        super().__init__()
        relations = {
            name: getattr(module, type(r).__name__, getattr(module, "Relation", None))(r.weight, r.concentration)
            for name, r in loss.relations.items()
        }
        self.loss = module.PixelSegmentContrastLoss(
            **relations, grid=loss.grid, iterations=loss.iterations, memory=bank_entries(loss).maxlen,
            pixels_per_image=loss.pixels_per_image,
        )  # fmt: skip
        self.relations, self.bank = loss.relations, self.loss.bank

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.loss(*args)
        return out if isinstance(out, tuple) else (out, {})


def bank_entries(loss: torch.nn.Module) -> deque:
    """The last batches' segments in an SPML loss's memory bank (in older revisions the bank is the deque itself)."""
    return getattr(loss.bank, "entries", loss.bank)


def scribbled_crops(data_root: Path, kinds: tuple[str, ...] = ("mask",), regions: bool = False) -> dict:
    """8 augmented 256² voc454 training crops with ``kinds``, a scribble-like label (every 16th mask row) and, with
    ``regions``, their Felzenszwalb over-segmentation, collated."""
    dataset = SegmentationDataset(voc_layout(data_root / "voc454"), "train", kinds=kinds)
    augment = JointTransform(AugmentConfig(crop_size=256, scale_range=(0.5, 1.5)))
    items = []
    for i in range(8):
        sample = dataset[i]
        scribble = np.full_like(sample.maps["mask"], 255)
        scribble[::16] = sample.maps["mask"][::16]
        sample = sample.with_maps(scribble=scribble)
        if regions:
            sample = sample.with_maps(regions=oversegment(sample.image, OversegmentConfig()))
        items.append(sample_to_tensors(augment(sample, np.random.default_rng(i)), dataset.class_set.num_classes))
    return collate(items)


def speed_spml(args: argparse.Namespace) -> dict:
    voc = get_class_set("voc")
    batch = scribbled_crops(args.data_root, regions=True)
    baseline = loss_module_at(args.baseline) if args.baseline else None
    methods, steps = {}, {}
    images = None
    for name, (method_name, method_args) in SPML_VARIANTS.items():
        for old in (False, True) if baseline and method_name == "spml" else (False,):
            torch.manual_seed(0)
            model, method = build(method_name, method_args, "scribbles", voc)
            if old:
                method.contrast = RevisionLoss(baseline, method.contrast)
            images = normalize(batch["image"], *model.mean_std) if images is None else images
            key = f"{name} ({args.baseline})" if old else name
            methods[key], steps[key] = method, method_step(model, method, images, batch)
    medians = median_seconds(steps, args.steps)
    print(f"{torch.get_num_threads()} threads, batch 8, crop 256, median of {args.steps} steps after one warm-up")
    segments = {}
    for name, seconds in medians.items():
        method = methods[name]
        segments[name] = bank_entries(method.contrast)[-1][0].shape[0] if hasattr(method, "contrast") else 0
        print(f"  {name:40s} {seconds:6.2f} s/step  {seconds / medians['pce']:4.1f} × pce  "
              f"{segments[name]:5d} segments/batch")  # fmt: skip
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return {"step_s": medians, "segments": segments, "peak_rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------------------------------------- boxes
BOX_VARIANTS = {  # name: (method, its arguments, supervision)
    "pce": ("pce", {}, "scribbles"),
    "box-prior (seg stage: CE on label maps)": ("full", {}, "full"),
    "boxinst": ("boxinst", {}, "boxes"),
    "boxinst without the pairwise term": ("boxinst", {"pairwise_weight": 0.0}, "boxes"),
}


def speed_boxes(args: argparse.Namespace) -> dict:
    voc = get_class_set("voc")
    batch = scribbled_crops(args.data_root, ("mask", "boxes"))
    steps, methods, images = {}, {}, None
    for name, (method_name, method_args, supervision) in BOX_VARIANTS.items():
        torch.manual_seed(0)
        model, method = build(method_name, method_args, supervision, voc)
        method.begin_step(1000, 1000)  # past the pairwise term's ramp
        images = normalize(batch["image"], *model.mean_std) if images is None else images
        methods[name], steps[name] = method, method_step(model, method, images, batch)
    logits = torch.randn(8, 21, 256, 256, requires_grad=True)

    def box_terms() -> None:
        loss, _ = methods["boxinst"].loss({"logits": logits}, batch)
        loss.backward()

    medians = median_seconds({**steps, "BoxInst's loss alone (forward + backward)": box_terms}, args.steps)
    print(f"{torch.get_num_threads()} threads, batch 8, crop 256, median of {args.steps} steps after one warm-up")
    for name, seconds in medians.items():
        print(f"  {name:45s} {seconds:6.3f} s  {seconds / medians['pce']:5.2f} × pce's step")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return {"step_s": medians, "ratio_to_pce": {k: v / medians["pce"] for k, v in medians.items()},
            "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}  # fmt: skip


# --------------------------------------------------------------------------------------------------------- rloss
def photos(data: Path, batch: int, size: int) -> torch.Tensor:
    files = sorted((data / "JPEGImages").glob("*.jpg"))[:batch]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def crf_loss_call(loss: DenseCRFLoss, logits: torch.Tensor, image: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of ``loss`` on ``softmax(logits)``."""

    def call() -> None:
        leaf = logits.clone().requires_grad_(True)
        loss(torch.softmax(leaf, 1), image).backward()

    return call


def rloss_step_vs_loss(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    image = photos(args.data_root / "voc454", args.batch, args.size)
    model = build_model(ModelConfig(), 21).train()
    normalized = normalize(image, *model.mean_std)
    target = torch.randint(0, 21, (args.batch, args.size, args.size))
    step = model_step(model, normalized, target)
    with torch.no_grad():
        logits = model(normalized)["logits"]  # stride 4: the loss resizes the softmax to the filtering scale
    calls = {f"model step {args.batch}×{args.size}² (lite0 DeepLab-v3+)": step}
    for kernel, scale in [("permutohedral", 0.5), ("permutohedral", 1.0), ("local", 0.5), ("local", 1.0)]:
        name = f"CRF loss fwd+bwd, {kernel}" + (" 11×11 window" if kernel == "local" else "") + f", scale {scale}"
        calls[name] = crf_loss_call(DenseCRFLoss(kernel=kernel, scale_factor=scale), logits, image)
    medians = median_seconds(calls, args.repeats)
    step_s = next(iter(medians.values()))
    return [{"name": name, "seconds": seconds, "ratio": seconds / step_s} for name, seconds in medians.items()]


def rloss_size_row(args: argparse.Namespace) -> dict:
    """Time and peak memory of the permutohedral CRF loss at full resolution on ``args.size``² photos."""
    image = photos(args.data_root / "voc454", args.batch, args.size)
    logits = torch.randn(args.batch, 21, args.size // 4, args.size // 4)
    call = crf_loss_call(DenseCRFLoss(scale_factor=1.0, sigma_xy=100 * args.size / 320), logits, image)
    call()  # the first call's allocations are not the loss's own
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
    before = _status_mb("VmRSS")
    seconds = median_seconds({"loss": call}, args.repeats)["loss"]
    peak = _status_mb("VmHWM") - before
    return {"size": args.size, "pixels": args.batch * args.size**2, "seconds": seconds, "peak_mb": peak}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def speed_rloss(args: argparse.Namespace) -> dict:
    if args.size_row:  # one size, in the process `speed rloss` started for it
        print(json.dumps(rloss_size_row(args)))
        return {}
    rows = rloss_step_vs_loss(args)
    for r in rows:
        print(f"{r['name']:52s} {r['seconds'] * 1000:8.1f} ms   {r['ratio']:.3f}× the model step")
    scaling = []
    print("\npermutohedral CRF loss, full resolution, σ_xy scaled with the image (fwd+bwd, batch 8, 21 classes):")
    for size in (80, 160, 320, 640):
        cmd = [sys.executable, "-m", "benchmarks.speed", "--data-root", str(args.data_root), "rloss", "--size-row",
               "--size", str(size), "--batch", str(args.batch), "--repeats", str(args.repeats)]  # fmt: skip
        scaling.append(last_json_line(cmd))
        r, first = scaling[-1], scaling[0]
        print(
            f"  {size:4d}²  {r['seconds'] * 1000:8.1f} ms  ({r['seconds'] / first['seconds']:5.1f}× the 80² time for "
            f"{r['pixels'] / first['pixels']:4.0f}× the pixels)  peak memory +{r['peak_mb']:.0f} MB"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return {"step_vs_loss": rows, "scaling": scaling}


# ------------------------------------------------------------------------------------------------------- scaling
# Runs a command and prints the peak resident memory (KiB) of its largest descendant process.
PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def standard_overrides(dataset: str, data_root: Path, cache: Path, steps: int, device: str, processes: int) -> list:
    """The standard profile's ``full`` row recipe, cut to ``steps`` steps with no checkpoint or validation inside."""
    row = Row(STANDARD, "standard", STANDARD.dataset(dataset), "full", "full", data_root, cache)
    recipe = to_dict(row.recipe(cache))
    threads = max(1, (os.cpu_count() or 1) // processes)
    return [
        f"data.root={recipe['data']['root']}",
        f"data.classes={recipe['data']['classes']}",
        f"data.train_split={recipe['data']['train_split']}",
        "data.val_split=''",  # no validation: training throughput only
        "data.num_workers=1",
        f"augment.crop_size={recipe['augment']['crop_size']}",
        f"augment.scale_range={recipe['augment']['scale_range']}",
        f"train.batch_size={recipe['train']['batch_size']}",
        f"train.lr={recipe['train']['lr']}",
        f"train.backbone_lr_mult={recipe['train']['backbone_lr_mult']}",
        f"train.steps={steps}",
        f"train.ckpt_every={steps}",
        f"train.log_every={steps}",
        f"train.device={device}",
        *([f"train.num_threads={threads}"] if device == "cpu" else []),
    ]


def torchrun_training(processes: int, overrides: list[str], out: Path) -> dict:
    """One ``torchrun --nproc_per_node PROCESSES weakseg train full``: its images/s and peak memory."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "weakseg.cli", "train", "full", *overrides, f"output_dir={out}", "-q"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], check=True, stdout=subprocess.PIPE, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "processes": processes,
        "train_images_per_s": metrics["train_images_per_s"],
        "peak_rss_mb": int(done.stdout.split()[-1]) / 1024,
        "peak_gpu_memory_mb": metrics.get("peak_gpu_memory_mb"),
    }


def speed_scaling(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            overrides = standard_overrides(args.dataset, args.data_root, Path(tmp), args.steps, args.device, n)
            rows.append(torchrun_training(n, overrides, Path(tmp) / f"n{n}"))
            row = rows[-1]
            row["speedup"] = row["train_images_per_s"] / rows[0]["train_images_per_s"]
            print(f"{n} process(es): {row['train_images_per_s']:.2f} images/s ({row['speedup']:.2f}×)", flush=True)
    return {
        "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]),
        "dataset": args.dataset,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "steps": args.steps,
        "recipe": "full, standard profile (lite0 + DeepLab-v3+, 256² crops, global batch 8)",
        "rows": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = entry_point("speed", __doc__)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON into this folder")
    sub = parser.add_subparsers(dest="what", required=True)

    p = sub.add_parser("step", help="a training step and the speed options, each variant in its own process")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--variant", choices=list(STEP_VARIANTS), help=argparse.SUPPRESS)
    p.set_defaults(run=speed_step)

    p = sub.add_parser("cam", help="a CAM-stage step per learner, and PPC's loss alone")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.set_defaults(run=speed_cam)

    p = sub.add_parser("spml", help="SPML's loss against pce's step")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--baseline", help="git revision whose SPML loss is timed too")
    p.set_defaults(run=speed_spml)

    p = sub.add_parser("rloss", help="the dense CRF loss against the model's step, and across image sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--size-row", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=speed_rloss)

    p = sub.add_parser("boxes", help="BoxInst's and box-prior's steps against pce's")
    p.add_argument("--steps", type=int, default=6)
    p.set_defaults(run=speed_boxes)

    p = sub.add_parser("scaling", help="training images/s and peak memory on 1 and N processes (torchrun)")
    p.add_argument("--dataset", default="voc454", choices=[d.name for d in STANDARD.datasets])
    p.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.set_defaults(run=speed_scaling)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    figures = args.run(args)
    if args.what == "scaling":
        write_json((args.out or SCALING_OUT) / f"{args.device}-{args.dataset}.json", figures)
    elif args.out and figures:
        write_json(args.out / f"{args.what}.json", figures)


if __name__ == "__main__":
    main()
