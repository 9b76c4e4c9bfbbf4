"""``weakseg bench``: method × supervision × dataset rows on real data, one protocol for every row of a profile.

Each row trains in its own process (so its peak memory is its own), evaluates on the dataset's val split and
writes ``benchmarks/results/<profile>/<dataset>/<method>-<supervision>.json``. A row whose fingerprint (resolved
recipe, label protocol, profile) and method arguments (with the code's defaults) match its JSON is not rerun unless
``--force``; ``docs/benchmarks.md`` and its plot are regenerated from the JSON files after every run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from weakseg.config import MOVED_KEYS, RECIPE_DIR, from_dict, move_key, to_dict
from weakseg.data.dataset import DataConfig, SegmentationDataset, camvid_layout, voc_layout
from weakseg.data.formats import read_coco_boxes, write_json
from weakseg.data.sample import LABEL_KINDS
from weakseg.data.simulate import LabelProtocol, derive_labels, mix_labels
from weakseg.engine.pseudo_labels import STAGES
from weakseg.engine.recipe import Recipe, load_recipe
from weakseg.errors import ConfigError, WeakSegError
from weakseg.methods import METHODS, method_plan
from weakseg.pseudo.cam import PseudoLabelConfig

log = logging.getLogger(__name__)

ROW_MARKER = "bench-row.json"  # in a row's run folder: the fingerprint and method arguments its checkpoints had

# Row order in the tables: the upper bounds first (pretrained, from scratch), then methods as they land.
METHOD_ORDER = (
    "full",
    "full-scratch",
    "pce",
    "rloss",
    "cam",
    "hfpl",
    "seam",
    "ppc",
    "ppc-hfpl",
    "spml",
    "pmp",
    "pmp-pretrained",
)
# Rows of a registered method with other arguments: name → (method, supervisions); recipe <name>-<supervision>
# (<name> for full supervision).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ppc-hfpl": ("ppc", ("tags",)),
    "pmp-pretrained": ("pmp", ("points",)),
    "full-scratch": ("full", ("full",)),  # the upper bound of `pmp` (from scratch): same model and schedule
}
SUPERVISION_ORDER = ("full", "tags", "boxes", "points", "scribbles", "mixed")
MIXED_FOLDER = "mixed"  # under a protocol's labels: each train image keeps one kind (mix_labels)

PROFILES: dict[str, list[str]] = {
    # Smoke checks: a few minutes per row on 2 CPU cores.
    "quick": ["train.steps=60", "train.ckpt_every=60", "eval.max_images=60"],
    # The numbers we quote: about 11 minutes of training per row on 2 CPU cores.
    "standard": ["train.steps=700", "train.ckpt_every=100"],
}
# Overrides of the first (CAM) stage of multi-stage methods, per profile: their own step count.
STAGE_PROFILES: dict[str, list[str]] = {"quick": ["train.steps=30"], "standard": []}
SHARED = [
    "augment.crop_size=256",
    "augment.scale_range=[0.5, 1.5]",
    "train.batch_size=8",
    "train.lr=0.02",
    "train.backbone_lr_mult=0.5",
    "train.seed=0",
    "train.log_every=20",
    "data.num_workers=1",
    "model.weights=package",
]


@dataclass(frozen=True)
class BenchDataset:
    name: str
    folder: str  # under --data-root
    layout: str  # voc | camvid
    recipes: tuple[str, ...] = ()  # extra recipes overlaid after the method's (data layout)
    supervisions: tuple[str, ...] = ("full", "tags", "boxes", "points", "scribbles", "mixed")
    given_boxes: str | None = None  # a real box file, used instead of boxes derived from masks
    protocol: LabelProtocol = field(default_factory=LabelProtocol)

    def data_config(self, root: Path) -> DataConfig:
        return voc_layout(root / self.folder) if self.layout == "voc" else camvid_layout(root / self.folder)


DATASETS = {
    "voc454": BenchDataset("voc454", "voc454", "voc", given_boxes="boxes_coco.json"),
    # PMP's labels: a point at the centre of every real box plus 4 background points per object outside all boxes.
    "voc454-box-centres": BenchDataset(
        "voc454-box-centres",
        "voc454",
        "voc",
        supervisions=("full", "points"),
        given_boxes="boxes_coco.json",
        protocol=LabelProtocol(points_mode="box-centres"),
    ),
    # Image-level tags are nearly uninformative on CamVid (most frames hold most classes): points and scribbles.
    "camvid": BenchDataset("camvid", "camvid", "camvid", ("data-camvid",), ("full", "points", "scribbles")),
}


def method_of(row_method: str) -> str:
    """The registered method a row trains (a variant's, or the row's own name)."""
    return VARIANTS[row_method][0] if row_method in VARIANTS else row_method


def row_supervisions(row_method: str) -> tuple[str, ...]:
    if row_method in VARIANTS:
        return VARIANTS[row_method][1]
    if row_method not in METHODS:
        names = sorted([*METHODS, *VARIANTS])
        raise ConfigError(f"unknown method {row_method!r} (available: {', '.join(names)})")
    return METHODS[row_method].supervisions


def cache_fields(method: type) -> list[str]:
    """The method's ``*_cache`` arguments: folders of per-image maps it computes once."""
    return [f.name for f in dataclasses.fields(method.Args) if f.name.endswith("_cache")]


def without_cache_folders(method: str, method_args: dict) -> dict:
    """``method_args`` of registered ``method`` without its cache folders: where per-image maps are kept is not part
    of a protocol (and names a machine's paths)."""
    return {k: v for k, v in method_args.items() if k not in cache_fields(METHODS[method])}


def recipe_name(method: str, supervision: str) -> str:
    return method if supervision == "full" else f"{method}-{supervision}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} × {cpu}{gpu}, torch {torch.__version__}"


@dataclass
class Row:
    profile: str
    dataset: BenchDataset
    method: str
    supervision: str
    data_root: Path
    results: Path
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.method}-{self.supervision}" + (f"-seed{self.seed}" if self.seed else "")

    @property
    def json_path(self) -> Path:
        return self.results / self.profile / self.dataset.name / f"{self.name}.json"

    def labels_dir(self, cache: Path) -> Path:
        return cache.resolve() / "labels" / self.dataset.name / self.protocol_hash()

    def protocol_hash(self) -> str:
        return _digest({"protocol": self.dataset.protocol.to_dict(), "boxes": self.dataset.given_boxes})[:12]

    def recipe(self, cache: Path) -> Recipe:
        data = self.dataset.data_config(self.data_root)
        overrides = [
            f"data.root={data.root}",
            f"data.classes={data.classes}",
            f"output_dir={cache / 'runs' / self.profile / self.dataset.name / self.name}",
            *SHARED,
            *PROFILES[self.profile],
            f"train.seed={self.seed}",
        ]
        method = METHODS[method_of(self.method)]
        for name in cache_fields(method):  # per-image maps (over-segmentations, point blots): one cache per dataset
            overrides.append(f"method_args.{name}={cache.resolve() / name / self.dataset.name}")
        if self.supervision == "mixed":
            overrides.append(f"data.labels={self.labels_dir(cache) / MIXED_FOLDER}")
        elif self.supervision != "full":
            overrides.append(f"data.labels={self.labels_dir(cache)}")
        recipes = [recipe_name(self.method, self.supervision), *self.dataset.recipes]
        recipe = load_recipe(recipes, overrides)
        plan = method_plan(recipe.method, recipe.method_args, recipe.supervision)
        if len(plan) == 1:
            return recipe
        return load_recipe(
            recipes, [*overrides, *(f"stages.{plan[0].name}.{item}" for item in STAGE_PROFILES[self.profile])]
        )

    def fingerprint(self, cache: Path) -> str:
        """The digest recorded with a row: resolved recipe, label protocol and profile, without paths, and without
        the :data:`LATER_KEYS` that are at their defaults."""
        return self.fingerprints(cache)[0]

    def fingerprints(self, cache: Path) -> list[str]:
        """Every digest under which a row recorded with the current recipe was stored: the current one first, then
        one per era of :data:`LATER_KEYS` (a row recorded before the ``i``-th key was added lacks it and every key
        added after it)."""
        recipe = to_dict(self.recipe(cache))
        recipe.pop("output_dir")
        recipe["data"].pop("labels", None)
        recipe["method_args"] = without_cache_folders(recipe["method"], recipe["method_args"])
        recipe["data"]["root"] = self.dataset.folder
        labels = self.protocol_hash()
        digests = [_digest({"recipe": era, "labels": labels, "profile": self.profile}) for era in recipe_eras(recipe)]
        return [digests[0], *dict.fromkeys(digests[1:])]

    def method_args(self, cache: Path) -> dict:
        return method_args_with_defaults(self.recipe(cache))

    def is_current(self, cache: Path) -> bool:
        """Whether the row's JSON exists and was recorded with the recipe, labels and method defaults it would run
        with now (rows recorded before their method arguments were kept are judged by the fingerprint alone)."""
        if not self.json_path.is_file():
            return False
        record = json.loads(self.json_path.read_text())
        if record.get("fingerprint") not in self.fingerprints(cache):
            return False
        return recorded_with(record, method_of(self.method), self.method_args(cache))


# Recipe keys added after benchmark rows were recorded, oldest first, with the default that keeps the behaviour from
# before the key existed: at that default they are left out of the fingerprint, so that adding a key does not make
# every recorded row stale; a row counts as current when it matches the recipe as it stood in any era.
LATER_KEYS: list[tuple[tuple[str, ...], object]] = [
    (("eval", "crf"), False),
    (("eval", "crf_iterations"), 10),
    (("data", "train_masks"), None),
    (("pseudo",), to_dict(PseudoLabelConfig())),
    (("stages",), {}),
    (("train", "norm"), "batch"),
    (("train", "tensorboard"), True),
    (("model", "norm"), "batch"),  # moved from pmp's method_args (config.MOVED_KEYS): there in the eras before
]


def recipe_eras(recipe: dict) -> list[dict]:
    """``recipe`` (a resolved recipe as a dict) as a record of each era of :data:`LATER_KEYS` holds it: for each ``i``,
    without the ``i``-th key and every key after it where they are at their defaults, or back at their old place where
    they moved (``i = 0``, the canonical form, first; the last is ``recipe`` itself)."""
    moved = {target: source for method, source, target in MOVED_KEYS if method == recipe.get("method")}
    eras = []
    for era in range(len(LATER_KEYS) + 1):
        pruned = copy.deepcopy(recipe)
        for path, default in LATER_KEYS[era:]:
            if path in moved:
                move_key(pruned, path, moved[path])
                continue
            *parents, key = path
            section = functools.reduce(lambda d, k: d.get(k, {}), parents, pruned)  # a section left out: nothing
            if section.get(key, default) == default:
                section.pop(key, None)
        eras.append(pruned)
    return eras


def variant_fingerprint(recipe: Recipe) -> dict:
    """What an ablation variant records of its recipe: all but the output folder, the data section and the method's
    cache folders."""
    fingerprint = {k: v for k, v in to_dict(recipe).items() if k not in ("output_dir", "data")}
    fingerprint["method_args"] = without_cache_folders(recipe.method, fingerprint["method_args"])
    return fingerprint


def method_args_with_defaults(recipe: Recipe) -> dict:
    """The method's arguments as it runs them: the recipe's, with the code's defaults filled in (a fingerprint holds
    only what the recipe writes, so it misses a changed default), without cache folders; as a JSON record holds them."""
    args = to_dict(from_dict(METHODS[recipe.method].Args, recipe.method_args, "method_args"))
    return json.loads(json.dumps(without_cache_folders(recipe.method, args)))


def recorded_with(record: dict, method: str, method_args: dict) -> bool:
    """Whether a record was made with ``method``'s arguments ``method_args`` (records from before they were kept:
    assumed so; arguments that have since moved out of ``method_args`` are left to the fingerprint)."""
    recorded = dict(record.get("method_args", method_args))
    for owner, source, _ in MOVED_KEYS:
        if owner == method and source[0] == "method_args":
            recorded.pop(source[1], None)
    return recorded == method_args


def variant_recorded(record: dict | None, recipe: Recipe) -> bool:
    """Whether an ablation table's ``record`` was made with ``recipe``: its fingerprint as any era held it, and its
    method's arguments as the code fills them in now."""
    if record is None or record.get("recipe") not in recipe_eras(variant_fingerprint(recipe)):
        return False
    return recorded_with(record, recipe.method, method_args_with_defaults(recipe))


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plan_rows(
    profile: str,
    datasets: list[str],
    methods: list[str],
    supervisions: list[str] | None,
    data_root: Path,
    results: Path,
    seeds: list[int] | None = None,
) -> list[Row]:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (profiles: {', '.join(PROFILES)})")
    rows = []
    for name in datasets:
        if name not in DATASETS:
            raise ConfigError(f"unknown benchmark dataset {name!r} (datasets: {', '.join(DATASETS)})")
        bench = DATASETS[name]
        if not (data_root / bench.folder).is_dir():
            raise ConfigError(f"{data_root / bench.folder}: benchmark data not found (set --data-root)")
        for method in methods:
            for supervision in row_supervisions(method):
                wanted = supervisions is None or supervision in supervisions or supervision == "full"
                # Mixed rows need their own recipe (<method>-mixed), which says how the kinds combine.
                mixed_ok = supervision != "mixed" or (RECIPE_DIR / f"{recipe_name(method, supervision)}.yaml").is_file()
                if wanted and supervision in bench.supervisions and mixed_ok:
                    # The upper bound is trained once; the methods once per seed.
                    for seed in [0] if supervision == "full" else seeds or [0]:
                        rows.append(Row(profile, bench, method, supervision, data_root, results, seed))
    return rows


def ensure_labels(row: Row, cache: Path) -> dict:
    """Simulate the dataset's weak labels once per protocol (train split) and return their summary."""
    out = row.labels_dir(cache)
    protocol_file = out / "protocol.json"
    if not protocol_file.is_file():
        derive_all(row, out)
    if row.supervision == "mixed" and not (out / MIXED_FOLDER / "mixed.json").is_file():
        mix_labels(out, out / MIXED_FOLDER, LABEL_KINDS, seed=row.dataset.protocol.seed)
    return json.loads(protocol_file.read_text())


def derive_all(row: Row, out: Path) -> None:
    """Every weak-label kind of the dataset's train split, by its protocol (real boxes where the dataset has them)."""
    data = row.dataset.data_config(row.data_root)
    train = SegmentationDataset(data, data.train_split, kinds=("mask",), required=("mask",))
    given = read_coco_boxes(Path(data.root) / row.dataset.given_boxes) if row.dataset.given_boxes else None
    derive_labels(
        train.masks(),
        train.class_set,
        out,
        LABEL_KINDS,
        row.dataset.protocol,
        given,
        progress=False,
    )


def claim_run_folder(folder: Path, fingerprint: dict, method_args: dict) -> bool:
    """Mark ``folder`` as trained under ``fingerprint`` and ``method_args``; True when its checkpoints were already
    trained under the same, so that an interrupted run there may continue from them."""
    marker = folder / ROW_MARKER
    trained_under = {"fingerprint": fingerprint, "method_args": method_args}
    same = marker.is_file() and json.loads(marker.read_text()) == trained_under
    write_json(marker, trained_under)
    return same


def run_row(row: Row, cache: Path, commit: str, *, resume: bool = False) -> dict:
    """Train and evaluate one row (every stage of its method) in this process; return its JSON record.

    With ``resume``, a row interrupted earlier under the same fingerprint continues from its stages' checkpoints
    (bit for bit the same training on CPU); its record lists the stages it reused as ``resumed_stages``, and its
    ``wall_s`` and images/s cover this process only."""
    from weakseg.engine.device import select_device
    from weakseg.engine.pipeline import Pipeline

    start = time.perf_counter()
    labels = ensure_labels(row, cache) if row.supervision != "full" else None
    recipe = row.recipe(cache)
    pipeline = Pipeline(recipe, progress=False)
    fingerprint, method_args = row.fingerprint(cache), method_args_with_defaults(recipe)
    resume = claim_run_folder(Path(recipe.output_dir), fingerprint, method_args) and resume
    if row.supervision == "full":
        train = SegmentationDataset(recipe.data, recipe.data.train_split, kinds=("mask",), required=("mask",))
        fraction, protocol = train.labelled_pixel_fraction("mask"), "full masks"
    elif row.supervision == "mixed":
        given = row.dataset.given_boxes is not None
        fraction = None
        protocol = (
            f"mixed: the train images dealt evenly to {'/'.join(LABEL_KINDS)} (seed {row.dataset.protocol.seed}); "
            + row.dataset.protocol.describe(LABEL_KINDS, given_boxes=given)
        )
    else:
        fraction = labels["summary"][row.supervision].get("labelled_pixel_fraction")
        protocol = row.dataset.protocol.describe([row.supervision], given_boxes=row.dataset.given_boxes is not None)
    result = pipeline.run(resume=resume)
    m = result.metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    final = pipeline.stage_recipe(pipeline.names[-1])
    record = {
        "dataset": row.dataset.name,
        "profile": row.profile,
        "method": row.method,
        "supervision": row.supervision,
        "miou": m["miou"],
        "per_class_iou": dict(zip(m["class_names"], m["per_class_iou"], strict=True)),
        "pixel_accuracy": m["pixel_accuracy"],
        "boundary_f": m["boundary_f"],
        "jf": m["jf"],
        "ratio_to_full": None,
        "train_images_per_s": result.train_images_per_s,
        "infer_images_per_s": m["infer_images_per_s"],
        "peak_rss_mb": peak,
        "wall_s": time.perf_counter() - start,
        "train_steps": final.train.steps,
        "device": str(select_device(recipe.train.device)),
        "hardware": hardware(),
        "backbone": f"{recipe.model.backbone} ({result.weights_source})",
        "head": f"{recipe.model.head}, output stride {recipe.model.output_stride}, {recipe.model.head_channels} ch",
        "schedule": f"{final.train.steps} steps × batch {final.train.batch_size}, crop {final.augment.crop_size}, "
        f"{final.train.optimizer} lr {final.train.lr} {final.train.schedule}",
        "eval": f"{row.dataset.name} val ({m['num_images']} images), scales {list(recipe.eval.scales)}, "
        f"flip {recipe.eval.flip}",
        "labels_protocol": protocol,
        "labelled_pixel_fraction": fraction,
        "seed": recipe.train.seed,
        "git_commit": commit,
        "command": command_for(row),
        "fingerprint": fingerprint,
        "method_args": method_args,
    }
    if result.resumed_stages:
        record["resumed_stages"] = result.resumed_stages
    if pipeline.multi_stage:
        first = pipeline.stage_recipe(pipeline.names[0])
        record["stages"] = {
            "wall_s": result.stage_wall_s,
            pipeline.names[0]: f"{first.method}: {first.train.steps} steps × batch {first.train.batch_size}, "
            f"crop {first.augment.crop_size}, scale {list(first.augment.scale_range)}",
        }
        record["pseudo_labels"] = pseudo_summary(m["pseudo_labels"], recipe.pseudo)
    return record


def pseudo_summary(metrics: dict, cfg: PseudoLabelConfig) -> dict:
    """The seed-quality figures a bench row keeps: mIoU and boundary F of each labelling on the train split, and the
    seed mIoU at every background threshold."""
    out = {name: {"miou": metrics[name]["miou"], "boundary_f": metrics[name]["boundary_f"]} for name in STAGES}
    out["pseudo"] = {"miou": metrics["pseudo"]["miou"], "coverage": metrics["coverage"]}
    out["images"] = metrics["images"]
    out["config"] = to_dict(cfg)
    if "seed_thresholds" in metrics:
        out["seed_thresholds"] = metrics["seed_thresholds"]
    return out


def command_for(row: Row) -> str:
    return (
        f"weakseg bench --profile {row.profile} --datasets {row.dataset.name} --methods {row.method} "
        f"--supervisions {row.supervision}" + (f" --seeds {row.seed}" if row.seed else "")
    )


def update_ratios(results: Path, profile: str) -> None:
    """Set every row's ``ratio_to_full`` from the ``full`` row of its dataset and profile."""
    for folder in sorted((results / profile).glob("*")):
        full_path = folder / "full-full.json"
        full = json.loads(full_path.read_text())["miou"] if full_path.is_file() else None
        for path in sorted(folder.glob("*.json")):
            record = json.loads(path.read_text())
            ratio = record["miou"] / full if full else None
            if record.get("ratio_to_full") != ratio:
                record["ratio_to_full"] = ratio
                write_json(path, record)


def bench(
    profile: str,
    datasets: list[str],
    methods: list[str],
    supervisions: list[str] | None,
    *,
    data_root: Path,
    results: Path,
    cache: Path,
    docs: Path,
    force: bool = False,
    seeds: list[int] | None = None,
) -> list[Path]:
    """Run the rows that are missing or stale (each in a child process), then refresh ratios and docs. A row that was
    interrupted resumes from its checkpoints unless ``force``."""
    rows = plan_rows(profile, datasets, methods, supervisions, data_root, results, seeds)
    commit = git_commit()
    done = []
    for row in rows:
        if not force and row.is_current(cache):
            print(f"{row.dataset.name} {row.name}: up to date ({row.json_path})")
            continue
        print(f"{row.dataset.name} {row.name}: running ({profile} profile)", flush=True)
        cmd = [
            sys.executable,
            "-m",
            "weakseg.bench",
            profile,
            row.dataset.name,
            row.method,
            row.supervision,
            str(row.seed),
            str(data_root),
            str(results),
            str(cache),
            commit,
            "fresh" if force else "resume",
        ]
        if run_child_process(cmd) != 0:
            raise WeakSegError(f"benchmark row {row.dataset.name} {row.name} failed (its error is printed above)")
        record = json.loads(row.json_path.read_text())
        print(f"  mIoU {record['miou']:.4f}, boundary F {record['boundary_f']:.4f}, {record['wall_s']:.0f} s")
        done.append(row.json_path)
    update_ratios(results, profile)
    from weakseg.report import write_benchmark_docs

    write_benchmark_docs(results, docs)
    return done


def run_child_process(cmd: list[str]) -> int:
    """Run ``cmd`` and return its exit code; if this process is interrupted (Ctrl-C) or terminated (SIGTERM, as job
    schedulers and ``timeout`` send), the child is stopped too rather than left training on its own."""
    child = subprocess.Popen(cmd)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return child.wait()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _child(argv: list[str]) -> None:
    profile, dataset, method, supervision, seed, data_root, results, cache, commit, start = argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    row = Row(profile, DATASETS[dataset], method, supervision, Path(data_root), Path(results), int(seed))
    record = run_row(row, Path(cache), commit, resume=start == "resume")
    write_json(row.json_path, record)


if __name__ == "__main__":
    _child(sys.argv[1:])
