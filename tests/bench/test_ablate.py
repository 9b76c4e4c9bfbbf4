"""``weakseg bench ablate``: the variant tables, their records, and tiny ablations end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, needs_voc454
from weakseg.bench.ablate import (
    AblationTable,
    AblationVariant,
    ablate,
    ablation_tables,
    load_table,
    plan_variants,
    summary,
    table_path,
)
from weakseg.bench.protocol import STANDARD, Protocol
from weakseg.bench.rows import Row, read_recipe
from weakseg.cli import main
from weakseg.data.formats import write_json
from weakseg.errors import ConfigError

RECORDED = Path(__file__).parents[2] / "benchmarks" / "results"


def test_the_tables_are_data_beside_the_recipes() -> None:
    assert ablation_tables() == [
        "box-prior", "cam", "pmp", "pmp-pretrained", "ppc", "probe", "rloss", "spml", "tags-learners"
    ]  # fmt: skip
    ppc = load_table("ppc")
    assert ppc.until == "pseudo" and ppc.per_seed and ppc.supervision == "tags" and not ppc.references
    assert ppc.variants[0] == AblationVariant("seam (base)", row="seam")
    assert {v.group for v in ppc.variants} == {None, "Probes of the seam base"}
    spml = load_table("spml")
    assert spml.row == "spml" and spml.references == ("pce", "spml") and spml.until is None
    assert spml.variants[-1].overrides == ("method_args.detach_classifier=false",)
    cam = load_table("cam")  # every variant on the CAM stage as it was before issue 27
    assert "pseudo.background_param=0.15" in cam.overrides and cam.variants[0].overrides == ()
    with pytest.raises(ConfigError, match="unknown ablation"):
        load_table("magic")


@pytest.mark.parametrize("name", ablation_tables())
def test_every_variant_is_its_bench_rows_recipe_with_overrides(name: str, data_root: Path, tmp_path: Path) -> None:
    table = load_table(name)
    cache = tmp_path / "cache"
    runs = plan_variants(STANDARD, table, dataset="voc454", supervision=table.supervision, variants=None,
                         seeds=[0], data_root=data_root, results=tmp_path, cache=cache)  # fmt: skip
    assert [run.variant for run in runs] == list(table.variants)
    for index, run in enumerate(runs):
        row = Row(STANDARD, "standard", STANDARD.dataset("voc454"), run.variant.row or table.row, table.supervision,
                  data_root, tmp_path)  # fmt: skip
        if run.variant.overrides or table.overrides:
            folder = cache / "runs" / "ablations" / "voc454" / f"{name}-{table.supervision}"
            assert run.recipe.output_dir == str(folder / (f"{index}-0" if table.per_seed else str(index)))
            assert run.provenance.recipe != row.provenance(cache).recipe
        else:  # the bench row itself, in its own folder
            assert run.recipe.output_dir == row.recipe(cache).output_dir and run.provenance == row.provenance(cache)
    first = table.variants[0].name
    assert runs[0].key == (f"{first} / seed 0" if table.per_seed else first)


def test_unknown_variants_and_seeds_of_a_seedless_table_are_refused(data_root: Path, tmp_path: Path) -> None:
    places = {"dataset": "voc454", "supervision": "points", "data_root": data_root, "results": tmp_path,
              "cache": tmp_path}  # fmt: skip
    with pytest.raises(ConfigError, match="unknown variants"):
        plan_variants(STANDARD, load_table("pmp"), variants=["magic"], seeds=[0], **places)
    with pytest.raises(ConfigError, match="seed 0 only"):
        plan_variants(STANDARD, load_table("pmp"), variants=None, seeds=[1], **places)


# Tables recorded before their row's recipe changed, kept in the docs (marked as older) until rerun.
OLDER_TABLES = {
    "ppc": "on the CAM stage before issue 27",
    "spml": "before SPML's final classifier on the frozen embedding (issue 28)",
}


def _recorded_tables() -> list[Path]:
    """The ablation tables' records (``benchmarks.cam_refinement`` and ``benchmarks.box_labels`` write their
    ``*-refinement.json`` and ``*-box-labels.json`` beside them)."""
    probes = ("-refinement", "-box-labels")
    return sorted(p for p in (RECORDED / "ablations").glob("*-*-*.json") if not p.stem.endswith(probes))


@needs_voc454
@pytest.mark.parametrize("path", _recorded_tables(), ids=lambda p: p.stem)
def test_the_recorded_variants_are_current(path: Path, tmp_path: Path) -> None:
    entries = json.loads(path.read_text())
    dataset, rest = path.stem.split("-", 1)
    name, supervision = rest.rsplit("-", 1)
    table = load_table(name)
    variants = {key: entry for key, entry in entries.items() if "overrides" in entry and "wall_s" in entry}
    assert variants  # not the copies of the bench rows
    for key, entry in variants.items():
        (run,) = plan_variants(STANDARD, table, dataset=dataset, supervision=supervision,
                               variants=[entry.get("variant", key)], seeds=[entry.get("seed", 0)],
                               data_root=SHARED_DATA, results=RECORDED, cache=tmp_path)  # fmt: skip
        assert run.key == key and list(run.variant.overrides) == entry["overrides"]
        if name in OLDER_TABLES:  # recorded before a change of their row's recipe: they would rerun
            assert not run.provenance.made(entry)
            continue
        assert run.provenance.made(entry) and entry["until"] == table.until
        longer = json.loads(json.dumps(run.provenance.recipe))
        longer["train"]["steps"] = 10
        assert read_recipe(longer) != run.provenance.recipe


def test_ablate_help_names_the_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "ablate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--variants", "--seeds", "--until", "--force", "--data-root", "--cache"))


@pytest.fixture
def places(shapes: Path, tmp_path: Path) -> dict:
    return {"dataset": "shapes", "data_root": shapes.parent, "results": tmp_path / "results",
            "cache": tmp_path / "cache"}  # fmt: skip


@pytest.mark.slow
def test_a_tiny_ablation_end_to_end(tiny: Protocol, places: dict) -> None:
    table = load_table("rloss")
    reference = places["results"] / "standard" / "shapes" / "pce-scribbles.json"
    write_json(reference, {"miou": 0.3, "boundary_f": 0.1, "jf": 0.2, "git_commit": "abc", "seed": 0})
    first = table.variants[0].name
    entries = ablate(tiny, table, supervision="scribbles", variants=[first], **places)
    assert list(entries) == ["pce (standard bench row)", first]
    assert entries["pce (standard bench row)"] == {"miou": 0.3, "boundary_f": 0.1, "jf": 0.2, "git_commit": "abc"}
    entry = entries[first]
    assert 0 <= entry["miou"] <= 1 and entry["stages_run"] == ["train"] and entry["until"] is None
    assert entry["overrides"] == ["method_args.regularizer_start=0.0"]
    assert entry["recipe"]["method_args"]["regularizer_start"] == 0.0
    assert str(places["cache"]) not in json.dumps(entry)
    path = table_path(places["results"], "shapes", "rloss", "scribbles")
    assert json.loads(path.read_text()) == entries
    assert ablate(tiny, table, supervision="scribbles", variants=[first], **places) == entries  # recorded: not rerun
    changed = dataclasses.replace(table, variants=(AblationVariant(first, ("method_args.crf_weight=1e-7",)),))
    assert (
        ablate(tiny, changed, supervision="scribbles", variants=[first], **places)[first]["wall_s"] != entry["wall_s"]
    )
    assert f"{first:45s} mIoU" in summary(table, entries, "shapes", "scribbles")


@pytest.mark.slow
def test_a_tiny_seed_ablation_runs_until_the_pseudo_labels(tiny: Protocol, places: dict) -> None:
    table = AblationTable(
        "cam", "cam",
        (AblationVariant("cam"), AblationVariant("no refinement", ("pseudo.refine=none", "pseudo.crf=false"))),
        supervision="tags", until="pseudo", per_seed=True, title="Seeds",
    )  # fmt: skip
    entries = ablate(tiny, table, seeds=[0], **places)
    assert list(entries) == ["cam / seed 0", "no refinement / seed 0"]
    for entry in entries.values():
        assert entry["stages_run"] == ["cam", "pseudo"] and entry["until"] == "pseudo" and entry["images"] == 8
        assert 0 <= entry["seed_miou"] <= 1 and "miou" not in entry
    assert entries["no refinement / seed 0"]["refined_miou"] == entries["no refinement / seed 0"]["seed_miou"]
    row_folder = places["cache"] / "runs" / "standard" / "shapes" / "cam-tags"
    assert (row_folder / "pseudo" / "metrics.json").is_file()  # the variant without overrides is the bench row
    text = summary(table, entries, "shapes", "tags")
    assert "Seeds" in text and "| no refinement | 0 |" in text
    with pytest.raises(ConfigError, match="--until cam"):
        ablate(tiny, table, until="cam", **places)
