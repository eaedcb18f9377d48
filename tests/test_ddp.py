"""DDP on CPU: 2 gloo processes (torch.multiprocessing.spawn, file:// rendezvous in tmp_path)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_loop import tiny_config, tiny_panel

from distgru.config.schema import Config, ModelConfig
from distgru.models import build_model
from distgru.processing.panel import ProcessedPanel
from distgru.training.loop import SampleShard, make_shard, train_loop
from distgru.training.losses import batch_loss, qlib_mse
from distgru.training.parallel import all_gather_rows, wrap_model

WORLD = 2


def gradient_errors(rank: int) -> dict[str, float]:
    """Max |DDP grad − single-process grad| with even and uneven per-rank weight sums."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_feat=4, hidden_size=8, num_layers=2), 5)
    reference = copy.deepcopy(model)
    x, y = torch.randn(8, 5, 4), torch.randn(8)
    errors = {}
    for case, weight in (("even", torch.ones(8)), ("uneven", torch.cat([10 * torch.rand(4), 0.1 * torch.rand(4)]))):
        reference.zero_grad()
        qlib_mse(reference(x), y, weight).backward()  # the single-process weighted loss of the global batch
        ddp = wrap_model(model, torch.device("cpu"))
        ddp.zero_grad()
        mine = slice(4 * rank, 4 * rank + 4)
        batch_loss(ddp(x[mine]), y[mine], weight[mine]).backward()
        errors[case] = max((p.grad - q.grad).abs().max().item()
                           for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    return errors


def task(rank: int, out: Path) -> None:
    rows = torch.arange(3 + 2 * rank, dtype=torch.float64)[:, None].repeat(1, 2) + 100 * rank  # 3 and 5 rows
    gathered = all_gather_rows(rows)[:, 0].tolist()
    errors = gradient_errors(rank)
    cfg, panel = ddp_setup()
    reports: list = []
    result = train_loop(cfg, panel, make_shard(cfg, panel, rank, WORLD), lambda m, s: reports.append((m, s)),
                        device=torch.device("cpu"))
    # Uneven shards: rank 0 holds 80% of the training and a third of the validation samples.
    full = make_shard(cfg, panel)
    t_cut, v_cut = 4 * len(full.train_inst) // 5, len(full.valid_inst) // 3
    t_part, v_part = (slice(0, t_cut), slice(0, v_cut)) if rank == 0 else (slice(t_cut, None), slice(v_cut, None))
    uneven = SampleShard(full.train_inst[t_part], full.train_day[t_part], full.train_weight[t_part],
                         full.valid_inst[v_part], full.valid_day[v_part])
    uneven_reports: list = []
    train_loop(tiny_config(n_epochs=2), panel, uneven, lambda m, s: uneven_reports.append(m),
               device=torch.device("cpu"))
    torch.save({"gathered": gathered, "grad_errors": errors, "uneven": uneven_reports,
                "metrics": [m for m, _ in reports],
                "has_state": [s is not None for _, s in reports], "best_epoch": result.best_epoch,
                "epochs_run": result.epoch}, out / f"rank{rank}.pt")


def ddp_setup() -> tuple[Config, ProcessedPanel]:
    return tiny_config(n_epochs=10, early_stop=3, lr=3e-3), tiny_panel()


def worker(rank: int, init_file: str, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        task(rank, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One 2-process run for all checks.

    Forked rather than spawned: a fresh interpreter re-imports torch, and DDP's constructor imports torch._dynamo
    (~800 modules); both cost 10-30 s per process on a loaded 2-core box. Importing dynamo here first lets the
    children inherit it. Forking after torch ran is safe with one intra-op thread in the child (as DataLoader
    workers do it), which ``worker`` sets first.
    """
    import torch._dynamo  # noqa: F401

    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(worker, args=(str(out / "rendezvous"), out), nprocs=WORLD, join=True, start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_weighted_gradient_matches_single_process(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["grad_errors"]["even"] < 1e-6 and rank["grad_errors"]["uneven"] < 1e-6, rank["grad_errors"]


def test_all_gather_uneven_rows(ranks: list[dict]) -> None:
    assert ranks[0]["gathered"] == ranks[1]["gathered"] == [0, 1, 2, 100, 101, 102, 103, 104]


def test_ranks_agree(ranks: list[dict]) -> None:
    rank0, rank1 = ranks
    assert rank0["epochs_run"] == rank1["epochs_run"] and rank0["best_epoch"] == rank1["best_epoch"]
    assert rank0["metrics"] == rank1["metrics"]  # timings are all-reduced (max) too, so everything is equal
    assert all(rank0["has_state"]) and not any(rank1["has_state"])


def test_two_ranks_match_one(ranks: list[dict]) -> None:
    cfg, panel = ddp_setup()
    single = train_loop(cfg, panel, make_shard(cfg, panel), lambda m, s: None, device=torch.device("cpu"))
    ddp = ranks[0]
    assert abs(ddp["best_epoch"] - single.best_epoch) <= 1
    ddp_ic = ddp["metrics"][ddp["best_epoch"] - 1]["valid_ic"]  # epochs count from 1
    single_ic = single.history[single.best_epoch - 1]["valid_ic"]
    assert abs(ddp_ic - single_ic) < 0.003, (ddp_ic, single_ic)
    assert np.isclose(ddp["metrics"][0]["train_loss"], single.history[0]["train_loss"], rtol=0.1)


def test_uneven_shards_run_in_lockstep(ranks: list[dict]) -> None:
    """Same step count on both ranks (else DDP would hang) and one metric from the gathered predictions."""
    assert len(ranks[0]["uneven"]) == 2 and ranks[0]["uneven"] == ranks[1]["uneven"]
    assert ranks[0]["uneven"][-1]["valid_ic"] > 0.3
