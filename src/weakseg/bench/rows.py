"""Benchmark rows: which rows a request plans, the recipe each trains, and whether a record of it is current.

A record (a row's JSON, an ablation variant's entry, a run folder's marker) keeps its :class:`Provenance`: the fully
resolved recipe without machine paths (:func:`record_recipe`), the label protocol and the profile. It is current iff
today's schema reads its recipe and labels into today's, the rule ``Pipeline.finished`` applies to a stage's recipe:
a key added since with a default that keeps the old behaviour leaves it current, a changed default or a key the
schema no longer has makes it stale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from weakseg.bench.labels import MIXED_FOLDER, labels_dir
from weakseg.bench.protocol import BenchDataset, Protocol
from weakseg.config import RECIPE_DIR, from_dict, to_dict, upgrade_recipe_dict
from weakseg.data.simulate import LabelProtocol
from weakseg.engine.recipe import Recipe, load_recipe
from weakseg.errors import ConfigError
from weakseg.methods import METHODS, method_plan
from weakseg.methods.base import method_class


def cache_fields(method: str) -> list[str]:
    """Registered ``method``'s ``*_cache`` arguments: folders of per-image maps it computes once."""
    return [f.name for f in dataclasses.fields(METHODS[method].Args) if f.name.endswith("_cache")]


def method_args_with_defaults(method: str, method_args: dict) -> dict:
    """The method's arguments as it runs them: ``method_args`` with the code's defaults filled in, without cache
    folders (where per-image maps are kept is not part of a protocol, and names a machine's paths)."""
    args = to_dict(from_dict(method_class(method).Args, method_args, "method_args"))
    return {k: v for k, v in args.items() if k not in cache_fields(method)}


def overriding(overlay: dict, base: dict) -> dict:
    """The keys of ``overlay`` that change ``base`` when deep-merged onto it (recursively)."""
    out = {}
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            value = overriding(value, base[key])
            if value:
                out[key] = value
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def record_recipe(recipe: Recipe) -> dict:
    """``recipe`` as a record keeps it: resolved (the method's arguments with their defaults), its stages' overlays
    without the keys that repeat the recipe's values, without the output folder, the label folder and the method's
    cache folders, ``data.root`` as the dataset's folder name."""
    data = to_dict(recipe)
    stages = {name: overriding(overlay, data) for name, overlay in data["stages"].items()}
    data["stages"] = {name: overlay for name, overlay in stages.items() if overlay}
    del data["output_dir"]
    del data["data"]["labels"]
    data["data"]["root"] = Path(recipe.data.root).name
    data["method_args"] = method_args_with_defaults(recipe.method, recipe.method_args)
    return json.loads(json.dumps(data))


def read_recipe(recorded: object) -> dict | None:
    """A recorded recipe as today's schema reads it (None when it cannot: a key it no longer has)."""
    if not isinstance(recorded, dict):
        return None
    try:
        return record_recipe(from_dict(Recipe, upgrade_recipe_dict(recorded)))
    except ConfigError:
        return None


def read_labels(recorded: object) -> dict | None:
    """A recorded label protocol as today's schema reads it (None when it cannot)."""
    if not isinstance(recorded, dict) or set(recorded) != {"protocol", "given_boxes"}:
        return None
    try:
        protocol = from_dict(LabelProtocol, recorded["protocol"], "labels.protocol")
    except ConfigError:
        return None
    return {"protocol": protocol.to_dict(), "given_boxes": recorded["given_boxes"]}


@dataclass(frozen=True)
class Provenance:
    """What a record was made with: its resolved recipe (:func:`record_recipe`), label protocol and profile."""

    recipe: dict
    labels: dict
    profile: str

    def as_record(self) -> dict:
        return dataclasses.asdict(self)

    def made(self, record: dict | None) -> bool:
        """Whether ``record`` was made with this: the same profile, and its recipe and labels, read by today's
        schema, are these."""
        return (
            record is not None
            and record.get("profile") == self.profile
            and read_labels(record.get("labels")) == self.labels
            and read_recipe(record.get("recipe")) == self.recipe
        )


def recipe_name(method: str, supervision: str) -> str:
    return method if supervision == "full" else f"{method}-{supervision}"


@dataclass(frozen=True)
class Row:
    protocol: Protocol
    profile: str
    dataset: BenchDataset
    method: str  # a registered method or one of the protocol's row variants
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

    def recipe(self, cache: Path) -> Recipe:
        """The recipe the row trains: its method's recipe on the dataset under the protocol's overrides, with its
        run folder, label folder and method caches under ``cache``."""
        data = self.dataset.data_config(self.data_root)
        overrides = [
            f"data.root={data.root}",
            f"data.classes={data.classes}",
            f"output_dir={cache / 'runs' / self.profile / self.dataset.name / self.name}",
            *self.protocol.shared,
            *self.protocol.profile(self.profile),
            f"train.seed={self.seed}",
        ]
        method = self.protocol.method_of(self.method)
        for name in cache_fields(method):  # per-image maps (over-segmentations, point blots): one cache per dataset
            overrides.append(f"method_args.{name}={cache.resolve() / name / self.dataset.name}")
        if self.supervision == "mixed":
            overrides.append(f"data.labels={labels_dir(self.dataset, cache) / MIXED_FOLDER}")
        elif self.supervision != "full":
            overrides.append(f"data.labels={labels_dir(self.dataset, cache)}")
        recipes = [recipe_name(self.method, self.supervision), *self.dataset.recipes]
        recipe = load_recipe(recipes, overrides)
        plan = method_plan(recipe.method, recipe.method_args, recipe.supervision)
        if len(plan) == 1:
            return recipe
        first_stage = (f"stages.{plan[0].name}.{item}" for item in self.protocol.stage_profiles[self.profile])
        return load_recipe(recipes, [*overrides, *first_stage])

    def provenance(self, cache: Path) -> Provenance:
        return Provenance(record_recipe(self.recipe(cache)), self.dataset.labels_record(), self.profile)

    def is_current(self, cache: Path) -> bool:
        """Whether the row's JSON exists and was made with the recipe, labels and profile it would run with now."""
        if not self.json_path.is_file():
            return False
        return self.provenance(cache).made(json.loads(self.json_path.read_text()))


def plan_rows(
    protocol: Protocol,
    profile: str,
    datasets: list[str],
    methods: list[str],
    supervisions: list[str] | None,
    data_root: Path,
    results: Path,
    seeds: list[int] | None = None,
) -> list[Row]:
    """The rows of ``methods`` × their supervisions (only ``supervisions``, and full, when given) × ``datasets``:
    the upper bound once, each method once per seed."""
    protocol.profile(profile)
    rows = []
    for name in datasets:
        bench = protocol.dataset(name)
        if not (data_root / bench.folder).is_dir():
            raise ConfigError(f"{data_root / bench.folder}: benchmark data not found (set --data-root)")
        for method in methods:
            for supervision in protocol.row_supervisions(method):
                wanted = supervisions is None or supervision in supervisions or supervision == "full"
                # Mixed rows need their own recipe (<method>-mixed), which says how the kinds combine.
                mixed_ok = supervision != "mixed" or (RECIPE_DIR / f"{recipe_name(method, supervision)}.yaml").is_file()
                if wanted and supervision in bench.supervisions and mixed_ok:
                    for seed in [0] if supervision == "full" else seeds or [0]:
                        rows.append(Row(protocol, profile, bench, method, supervision, data_root, results, seed))
    return rows
