"""torchrun / DDP on the CPU (gloo): collectives, batch-level losses over processes, training and resume.

Each test starts two processes with ``torch.multiprocessing`` (or ``torchrun`` itself for the CLI test) and
compares what they compute with one process on the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import tiny_overrides
from weakseg import distributed
from weakseg.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from weakseg.engine.evaluator import evaluate
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.losses.ppc import PixelPrototypeContrastLoss, cam_assignments, estimate_prototypes
from weakseg.losses.spml import FeatureAffinity, PixelSegmentContrastLoss

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    distributed.init_distributed("cpu")
    try:
        fn(rank, *args)
    finally:
        distributed.shutdown()


def spawn(fn: Callable, *args: object) -> None:
    """Run ``fn(rank, *args)`` in two gloo processes (``fn`` at module level, so the children can import it)."""
    mp.start_processes(_entry, args=(fn, _free_port(), args), nprocs=WORLD, start_method="spawn")


def test_one_process_is_the_identity() -> None:
    x = torch.randn(3, 2)
    gathered, start = distributed.gather_rows(x)
    assert gathered is x and start == 0
    assert distributed.world_size() == 1 and distributed.is_main() and list(distributed.shard(3)) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------ collectives
def _collectives_worker(rank: int, out: Path) -> None:
    """What the tests of this section check, computed by each of two processes on its half of the batch."""
    x = torch.full((rank + 2, 3), float(rank + 1), requires_grad=True)  # 2 rows on rank 0, 3 on rank 1
    gathered, start = distributed.gather_rows(x)
    weights = torch.arange(15.0).reshape(5, 3) * (rank + 1)  # each process weighs the gathered rows differently
    (gathered * weights).sum().backward()
    flags, _ = distributed.gather_rows(torch.tensor([rank == 0, True]))
    gather = {"gathered": gathered.detach(), "start": start, "grad": x.grad, "flags": flags}
    torch.save(gather, out / f"gather{rank}.pt")
    views, present = _ppc_inputs()
    torch.save(_ppc(views, present, slice(2 * rank, 2 * rank + 2)), out / f"ppc{rank}.pt")
    torch.save(_spml(slice(2 * rank, 2 * rank + 2)), out / f"spml{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collectives")
    spawn(_collectives_worker, out)
    return out


@pytest.mark.slow
def test_gather_rows_concatenates_in_rank_order_and_returns_each_process_its_gradient(two_processes: Path) -> None:
    r0, r1 = (torch.load(two_processes / f"gather{r}.pt") for r in range(WORLD))
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((3, 3), 2.0)])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    assert (r0["start"], r1["start"]) == (0, 2)
    summed = torch.arange(15.0).reshape(5, 3) * 3  # d/dx of Σ_r (gathered · w_r): the weights summed over ranks
    assert torch.equal(r0["grad"], summed[:2]) and torch.equal(r1["grad"], summed[2:])
    assert r0["flags"].tolist() == [True, True, False, True]


# --------------------------------------------------------------------------------------- batch-level losses
def _ppc_inputs():
    g = torch.Generator().manual_seed(0)
    views = [
        (F.normalize(torch.randn(4, 6, 3, 4, generator=g, dtype=torch.float64), dim=1),
         torch.rand(4, 3, 3, 4, generator=g, dtype=torch.float64))
        for _ in range(2)
    ]  # fmt: skip
    present = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    return views, present


def _ppc(views, present, images: slice):
    """Prototypes of view 0 and the loss (without random pixel sampling) on ``images`` of the batch."""
    emb = tuple(v[0][images].clone().requires_grad_() for v in views)
    scores = tuple(v[1][images] for v in views)
    labels, confidence = cam_assignments(scores[0], present[images], 0.2)
    pixels = emb[0].permute(0, 2, 3, 1).reshape(-1, 6)
    protos, exists = estimate_prototypes(
        pixels, labels.reshape(-1), confidence.permute(0, 2, 3, 1).reshape(pixels.shape[0], -1), top_k=5
    )
    loss, _ = PixelPrototypeContrastLoss(top_k=5, sampling=False)(emb, scores, present[images])
    loss.backward()
    return protos, exists, loss.detach(), [e.grad for e in emb]


@pytest.mark.slow
def test_ppc_prototypes_and_loss_are_those_of_the_global_batch(two_processes: Path) -> None:
    views, present = _ppc_inputs()
    protos, exists, loss, grads = _ppc(views, present, slice(None))
    ranks = [torch.load(two_processes / f"ppc{r}.pt") for r in range(WORLD)]
    for r_protos, r_exists, _, _ in ranks:  # the top-5 pixels of each class over all four images
        assert torch.equal(r_exists, exists)
        torch.testing.assert_close(r_protos[exists], protos[exists])
    # Every pixel counts in this batch, so the mean of the processes' losses is the global mean, and DDP's
    # gradient (the processes' mean) is the global gradient.
    torch.testing.assert_close(sum(r[2] for r in ranks) / WORLD, loss)
    for view in range(2):
        local = torch.cat([r[3][view] for r in ranks]) / WORLD
        torch.testing.assert_close(local, grads[view])


def _spml_inputs():
    g = torch.Generator().manual_seed(1)
    steps = []
    for _ in range(2):  # two steps: the second contrasts with the first's segments in the memory bank
        e = F.normalize(torch.randn(4, 5, 6, 6, generator=g, dtype=torch.float64), dim=1)
        labels = torch.randint(0, 3, (4, 6, 6), generator=g)  # every pixel labelled: equal counts per process
        regions = torch.randint(0, 3, (4, 6, 6), generator=g)
        tags = F.one_hot(labels.flatten(1), 3).amax(1)
        steps.append((e, labels, regions, tags))
    return steps


def _spml(images: slice):
    loss_fn = PixelSegmentContrastLoss(affinity=FeatureAffinity(0.5, 8.0), grid=(2, 2))  # co-occurrence's λ, κ
    out = []
    for e, labels, regions, tags in _spml_inputs():
        e = e[images].clone().requires_grad_()
        loss, terms = loss_fn(e, labels[images], regions[images], tags[images])
        loss.backward()
        out.append((loss.detach(), e.grad, terms))
    return out


@pytest.mark.slow
def test_spml_segments_and_memory_bank_span_the_global_batch(two_processes: Path) -> None:
    single = _spml(slice(None))
    ranks = [torch.load(two_processes / f"spml{r}.pt") for r in range(WORLD)]
    for step, (loss, grad, terms) in enumerate(single):
        for name, value in terms.items():
            torch.testing.assert_close(sum(r[step][2][name] for r in ranks) / WORLD, value, msg=name)
        torch.testing.assert_close(sum(r[step][0] for r in ranks) / WORLD, loss)
        torch.testing.assert_close(torch.cat([r[step][1] for r in ranks]) / WORLD, grad)


# ------------------------------------------------------------------------------------------------ training
def _overrides(shapes: Path, out: Path, *extra: str) -> list[str]:
    # frozen batch norm and no dropout: what one process computes on 4 images, two compute on 2 each
    return tiny_overrides(shapes, out, "train.batch_size=4", "train.norm=frozen", "model.dropout=0", *extra)


def _train_worker(rank: int, shapes: Path, out: Path, until: int | None, resume: bool) -> None:
    trainer = Trainer(load_recipe("full", _overrides(shapes, out)), progress=False)
    if resume:
        assert trainer.resume()
    trainer.fit(until=until)


def _history(out: Path) -> list[float]:
    return [row["loss"] for row in load_checkpoint(out / "last.pt")["history"] if "loss" in row]


@pytest.mark.slow
def test_two_processes_follow_one_process_and_resume_under_either(shapes: Path, tmp_path: Path) -> None:
    single = Trainer(load_recipe("full", _overrides(shapes, tmp_path / "one")), progress=False)
    single.fit()
    spawn(_train_worker, shapes, tmp_path / "two", None, False)
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert len(one) == len(two) == 4 and all(math.isfinite(v) for v in two)
    # The processes average their own pixels' losses, one process all pixels: equal up to how the pixels that
    # augmentation padding leaves unlabelled split between the halves (measured: 1e-3; another seed: 1e-2).
    assert two == pytest.approx(one, rel=5e-3)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == WORLD
    final = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    for name, weight in load_checkpoint(tmp_path / "two" / "last.pt")["model"].items():
        torch.testing.assert_close(weight, final[name], rtol=1e-2, atol=2e-3, msg=name)  # another seed: 3.1

    # A two-process checkpoint resumes in one process, and a one-process checkpoint in two.
    spawn(_train_worker, shapes, tmp_path / "two-then-one", 2, False)
    resumed = Trainer(load_recipe("full", _overrides(shapes, tmp_path / "two-then-one")), progress=False)
    assert resumed.resume() and resumed.step == 2
    resumed.fit()
    single_half = Trainer(load_recipe("full", _overrides(shapes, tmp_path / "one-then-two")), progress=False)
    single_half.fit(until=2)
    spawn(_train_worker, shapes, tmp_path / "one-then-two", None, True)
    for folder in ("two-then-one", "one-then-two"):
        assert load_checkpoint(tmp_path / folder / "last.pt")["step"] == 4
        assert _history(tmp_path / folder) == pytest.approx(one, rel=5e-3)


def _eval_worker(rank: int, checkpoint: Path, shapes: Path, out: Path) -> None:
    model, recipe, _ = load_model_from_checkpoint(checkpoint, torch.device("cpu"))
    from weakseg.data.dataset import SegmentationDataset

    dataset = SegmentationDataset(recipe.data, "val", kinds=("mask",), required=("mask",))
    metrics = evaluate(model, dataset, recipe.eval, torch.device("cpu"), num_workers=0, progress=False,
                       prediction_dir=out / "pred")  # fmt: skip
    (out / f"{rank}.json").write_text(json.dumps(metrics))


@pytest.mark.slow
def test_sharded_evaluation_scores_every_image_once(shapes: Path, tmp_path: Path) -> None:
    trainer = Trainer(load_recipe("full", tiny_overrides(shapes, tmp_path / "run", "train.steps=2")), progress=False)
    trainer.fit()
    model, recipe, _ = load_model_from_checkpoint(tmp_path / "run" / "last.pt", torch.device("cpu"))
    from weakseg.data.dataset import SegmentationDataset

    dataset = SegmentationDataset(recipe.data, "val", kinds=("mask",), required=("mask",))
    expected = evaluate(model, dataset, recipe.eval, torch.device("cpu"), num_workers=0, progress=False)
    spawn(_eval_worker, tmp_path / "run" / "last.pt", shapes, tmp_path)
    for r in range(WORLD):
        got = json.loads((tmp_path / f"{r}.json").read_text())
        assert got["confusion"] == expected["confusion"] and got["num_images"] == expected["num_images"] == 3
        assert got["boundary_f"] == pytest.approx(expected["boundary_f"])
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3


# ------------------------------------------------------------------------------------------------ torchrun CLI
@pytest.mark.slow
def test_torchrun_trains_a_multi_stage_recipe_with_sharded_pseudo_labels(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "cam"
    overrides = tiny_overrides(shapes, out, "train.steps=2", "stages.seg.train.steps=2", "pseudo.scales=[1.0]")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "weakseg.cli", "train", "cam-tags", *overrides, "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pseudo = json.loads((out / "pseudo" / "metrics.json").read_text())
    assert pseudo["images"] == 8 and 0.0 <= pseudo["seed"]["miou"] <= 1.0
    sweep = pseudo["seed_thresholds"]  # scored on both processes' images, like the seed at the labels' threshold
    threshold = pseudo["config"]["pseudo"]["background_param"]
    assert sweep["miou"][sweep["thresholds"].index(threshold)] == pytest.approx(pseudo["seed"]["miou"], abs=1e-12)
    assert len(list((out / "pseudo" / "labels").glob("*.png"))) == 8  # each process labelled half
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["final_stage"] == "seg" and summary["processes"] == WORLD
