"""The training loop in one process: loss, clipping, early stopping, resume, reweighters, flat mode."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from distgru.config.schema import Config, DatasetConfig, FeatureConfig, ModelConfig, ReweighterConfig, TrainConfig
from distgru.processing.panel import ProcessedPanel
from distgru.training import loop as loop_module
from distgru.training.loop import SampleShard, make_shard, train_loop
from distgru.training.losses import batch_loss, qlib_mse, valid_metrics
from distgru.training.reweight import sample_weights
from distgru.training.scoring import predict
from distgru.training.state import TIMINGS, EarlyStopping, StateFormatError, TrainState
from distgru.training.steps import clip_gradients
from distgru.training.windows import sample_index


def tiny_panel(n_inst: int = 30, n_days: int = 120, n_feat: int = 4, seed: int = 0) -> ProcessedPanel:
    """A market whose label is a learnable function of today's and yesterday's features, with gaps."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_inst, n_days, n_feat)).astype(np.float32)
    previous = np.roll(features[:, :, 1], 1, axis=1)
    label_raw = (0.6 * features[:, :, 0] + 0.4 * previous + 0.5 * rng.standard_normal((n_inst, n_days)))
    membership = rng.random((n_inst, n_days)) < 0.92
    membership[: n_inst // 5, : n_days // 3] = False  # late joiners
    label_learn = (label_raw - label_raw.mean(0)) / label_raw.std(0)
    label_learn[rng.random((n_inst, n_days)) < 0.03] = np.nan  # DropnaLabel gaps
    third = n_days // 6
    return ProcessedPanel(calendar=pd.bdate_range("2020-01-01", periods=n_days),
                          instruments=tuple(f"S{i:03d}" for i in range(n_inst)),
                          feature_names=tuple(f"f{k}" for k in range(n_feat)), features=features,
                          label_raw=label_raw.astype(np.float32), label_learn=label_learn.astype(np.float32),
                          membership=membership,
                          segments={"train": (third, 4 * third), "valid": (4 * third, 5 * third),
                                    "test": (5 * third, n_days)})


def tiny_config(**train: object) -> Config:
    defaults: dict[str, object] = {"n_epochs": 6, "lr": 1e-2, "batch_size": 64, "early_stop": 3, "metric": "ic"}
    return Config(model=ModelConfig(d_feat=4, hidden_size=8, num_layers=1), dataset=DatasetConfig(step_len=5),
                  train=TrainConfig(**{**defaults, **train}))


def run(cfg: Config, panel: ProcessedPanel, device: str | torch.device = "cpu",
        **kwargs: object) -> tuple[TrainState, list]:
    reports: list = []
    result = train_loop(cfg, panel, make_shard(cfg, panel), lambda m, s: reports.append((m, s)),
                        device=torch.device(device), **kwargs)
    return result, reports


def test_weighted_mse_by_hand() -> None:
    pred, label = torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, float("nan"), 1.0, 0.5])
    weight = torch.tensor([2.0, 1.0, 3.0, 4.0])
    # qlib: mean over the 3 finite labels of w·err² = (2·1 + 3·4 + 4·0.25) / 3; it divides by N, not by Σw.
    assert qlib_mse(pred, label, weight).item() == pytest.approx(15 / 3)
    assert batch_loss(pred[[0, 2, 3]], label[[0, 2, 3]], weight[[0, 2, 3]]).item() == pytest.approx(15 / 3)
    huber = batch_loss(pred[[0, 2]], label[[0, 2]], weight[[0, 2]], "huber").item()
    assert huber == pytest.approx((2 * 0.5 + 3 * (2 - 0.5)) / 2)


def test_valid_metrics_by_hand() -> None:
    day = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([1.0, 2.0, 3.0, 3.0, 2.0, 1.0])
    raw = np.array([1.0, 2.0, 4.0, 1.0, 2.0, np.nan])  # day 0 Pearson = corr([1,2,3],[1,2,4]); day 1 = -1
    day0 = np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1]
    m = valid_metrics(pred, np.zeros(6), raw, day)
    assert m["ic"] == pytest.approx((day0 - 1) / 2)
    assert m["rank_ic"] == pytest.approx(0.0)  # day 0: +1, day 1: -1
    assert m["loss"] == pytest.approx(-np.mean(pred**2))


def grads(*values: list[float]) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.zeros(len(v))) for v in values]
    for p, v in zip(params, values, strict=True):
        p.grad = torch.tensor(v)
    return params


def test_clip_by_value() -> None:
    params = grads([5.0, -1.0], [0.5, -4.0])
    norm, clipped = clip_gradients(params, "value", 3.0)
    assert norm.item() == pytest.approx(6.5) and clipped.item()
    assert params[0].grad.tolist() == [3.0, -1.0] and params[1].grad.tolist() == [0.5, -3.0]
    _, clipped = clip_gradients(grads([1.0, -2.9]), "value", 3.0)
    assert not clipped.item()


def test_clip_by_norm() -> None:
    params = grads([3.0], [4.0])
    norm, clipped = clip_gradients(params, "norm", 1.0)
    assert norm.item() == pytest.approx(5.0) and clipped.item()
    assert params[0].grad.item() == pytest.approx(0.6) and params[1].grad.item() == pytest.approx(0.8)
    params = grads([3.0], [4.0])
    _, clipped = clip_gradients(params, "norm", 10.0)
    assert not clipped.item() and params[1].grad.item() == 4.0
    _, clipped = clip_gradients(grads([30.0]), "none", 1.0)
    assert not clipped.item()


def test_an_unmeasured_step_clips_by_value_without_a_norm() -> None:
    params = grads([5.0, -1.0], [0.5, -4.0])
    assert clip_gradients(params, "value", 3.0, measure=False) is None
    assert params[0].grad.tolist() == [3.0, -1.0] and params[1].grad.tolist() == [0.5, -3.0]
    assert clip_gradients(grads([30.0]), "none", 1.0, measure=False) is None
    params = grads([3.0], [4.0])  # clipping by norm needs the norm, so it measures anyway
    norm, clipped = clip_gradients(params, "norm", 1.0, measure=False)
    assert norm.item() == pytest.approx(5.0) and clipped.item() and params[0].grad.item() == pytest.approx(0.6)


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_the_loss_without_the_nan_mask_is_the_same_bits(kind: str) -> None:
    """``finite=True`` (training labels are checked once) must not change a bit of the loss or its gradient."""
    g = torch.Generator().manual_seed(0)
    label, weight = 2 * torch.randn(257, generator=g), torch.rand(257, generator=g) * 3
    base = torch.randn(257, generator=g)
    results = []
    for finite in (False, True):
        pred = base.clone().requires_grad_()
        loss = batch_loss(pred, label, weight, kind, finite=finite)
        loss.backward()
        results.append((loss.detach(), pred.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_early_stopping_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.9, 0.9])  # a tie is not an improvement (strict >, as qlib)
    monkeypatch.setattr(loop_module, "_valid_metrics", lambda rows, panel: dict.fromkeys(("loss", "ic", "rank_ic"),
                                                                                        next(scores)))
    result, reports = run(tiny_config(n_epochs=10, early_stop=3), tiny_panel(n_inst=12, n_days=60))
    # Epochs count from 1 everywhere: the second epoch (0.3) is the best, three more without gain stop it.
    assert (result.best_epoch, result.epoch, result.stopped_early, result.finished) == (2, 5, True, True)
    assert result.best_score == pytest.approx(0.3)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3, 4, 5]
    assert [m["patience"] for m, _ in reports] == [0, 0, 1, 2, 3]
    # the running best a search can rank trials by (tune.metric: best_score)
    assert [m["best_score"] for m, _ in reports] == pytest.approx([0.1, 0.3, 0.3, 0.3, 0.3])
    assert [m["stopped_early"] for m, _ in reports] == [False] * 4 + [True]
    assert reports[-1][1].patience == 3 and reports[-1][1].best_epoch == 2 and reports[-1][1].finished
    assert not reports[-2][1].finished


def test_early_stopping_rule_by_hand() -> None:
    stop = EarlyStopping(limit=2, n_epochs=4)
    assert [stop.update(e, s) for e, s in enumerate([0.5, float("nan"), 0.5], start=1)] == [True, False, False]
    assert stop.done(3) and stop.stopped_early(3) and stop.best_epoch == 1 and stop.patience_left == 0
    limit = EarlyStopping(limit=10, n_epochs=2)
    limit.update(1, 0.1)
    limit.update(2, 0.2)
    assert limit.done(2) and not limit.stopped_early(2) and limit.best_epoch == 2


def test_resume_equals_uninterrupted(tmp_path) -> None:
    cfg, panel = tiny_config(n_epochs=40, early_stop=3, deterministic=True), tiny_panel()
    full, reports = run(cfg, panel)
    assert full.stopped_early and full.epoch > 5
    # Interrupt after epoch 3; the state goes through its file (weights_only load) as a checkpoint does.
    reports[2][1].save(tmp_path)
    state = TrainState.load(tmp_path)
    resumed, resumed_reports = run(cfg, panel, resume=state)
    assert resumed_reports[0][0]["epoch"] == 4
    assert (resumed.best_epoch, resumed.best_score, resumed.epoch, resumed.stopped_early) == \
           (full.best_epoch, full.best_score, full.epoch, full.stopped_early)
    assert untimed(resumed.history) == untimed(full.history)
    for key, value in full.best_model.items():
        assert torch.equal(value, resumed.best_model[key]), key
    assert full.history[-1]["valid_ic"] > 0.3  # the tiny market is learnable


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_checkpoint_cadence_and_a_resume_that_replays_epochs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The negated IC gets worse as the model learns: epoch 1 stays the best, so checkpoints fall on the cadence.
    real = loop_module._valid_metrics
    monkeypatch.setattr(loop_module, "_valid_metrics",
                        lambda rows, panel: {k: -v for k, v in real(rows, panel).items()})
    cfg, panel = tiny_config(n_epochs=7, early_stop=10, deterministic=True, checkpoint_every=3), tiny_panel()
    full, reports = run(cfg, panel)
    assert full.best_epoch == 1 and full.epoch == 7
    # Every 3rd epoch, the best epoch (1) and the last (7); None is "no checkpoint" to the reporter.
    assert [m["epoch"] for m, s in reports if s is not None] == [1, 3, 6, 7]
    assert all(s.epoch == m["epoch"] for m, s in reports if s is not None) and reports[-1][1].finished
    # A worker lost during epoch 6 resumes from epoch 3's checkpoint and replays epochs 4 and 5.
    reports[2][1].save(tmp_path)
    resumed, resumed_reports = run(cfg, panel, resume=TrainState.load(tmp_path))
    assert [m["epoch"] for m, _ in resumed_reports] == [4, 5, 6, 7]
    assert untimed(resumed.history) == untimed(full.history) and resumed.epoch == full.epoch
    for key, value in full.model.items():
        assert torch.equal(value, resumed.model[key]), key
    assert all(torch.equal(v, resumed.best_model[k]) for k, v in full.best_model.items())


def test_the_first_row_of_each_worker_start_carries_its_start_up(tmp_path) -> None:
    cfg, panel = tiny_config(n_epochs=3, early_stop=5), tiny_panel(n_inst=12, n_days=60)
    full, reports = run(cfg, panel, started=time.perf_counter() - 100.0)  # the worker started 100 s ago
    first, later = full.history[0], full.history[1:]
    assert first["startup_s"] >= 100.0 and 0.0 < first["warmup_s"] <= first["epoch_s"]
    assert not any({"startup_s", "warmup_s"} & row.keys() for row in later)
    resumed, _ = run(cfg, panel, resume=reports[0][1])
    assert "startup_s" in resumed.history[1] and "startup_s" not in resumed.history[2]
    assert resumed.history[1]["startup_s"] < 100.0


def test_report_state_and_predict() -> None:
    cfg, panel = tiny_config(n_epochs=2, clip="norm", clip_value=0.5), tiny_panel(n_inst=12, n_days=60)
    result, reports = run(cfg, panel)
    metrics, state = reports[-1]
    assert {"train_loss", "grad_norm", "clip_frac", "valid_score", "valid_ic", "samples_per_s"} <= metrics.keys()
    assert 0.0 <= metrics["clip_frac"] <= 1.0
    assert state.epoch == 2 and state.history[-1] == metrics and state.optimizer["state"]
    model = loop_module.build_model(cfg.model, 5)
    model.load_state_dict(result.best_model)
    inst, day = sample_index(panel, "test", "infer")
    scores = predict(model, panel, inst, day, 5, 7, "cpu")
    assert scores.shape == inst.shape and np.isfinite(scores).all()
    # Batch size does not change predictions (up to float reassociation).
    np.testing.assert_allclose(predict(model, panel, inst, day, 5, 1000, "cpu"), scores, atol=1e-6)


def test_bf16_autocast_and_fp16_needs_cuda() -> None:
    panel = tiny_panel(n_inst=12, n_days=60)
    result, _ = run(tiny_config(n_epochs=1, precision="bf16"), panel)
    assert np.isfinite(result.history[0]["train_loss"]) and result.history[0]["valid_ic"] > 0
    with pytest.raises(ValueError, match="CUDA"):
        run(tiny_config(n_epochs=1, precision="fp16"), panel)


def test_flat_mode_trains() -> None:
    panel = tiny_panel(n_inst=12, n_days=60, n_feat=12)
    cfg = Config(features=FeatureConfig(set="alpha360"), model=ModelConfig(d_feat=6, hidden_size=4, input="flat"),
                 train=TrainConfig(n_epochs=2, batch_size=32, metric="loss"))
    result, _ = run(cfg, panel)
    assert result.epoch == 2 and np.isfinite(result.best_score)


class HalfOnMondays:
    def reweight(self, dates: pd.DatetimeIndex, instruments: np.ndarray) -> np.ndarray:
        return np.where(dates.day_of_week == 0, 0.5, 1.0)


def test_reweighters() -> None:
    panel = tiny_panel(n_inst=6, n_days=60)
    inst, day = sample_index(panel, "train", "learn")
    last = panel.segments["train"][1] - 1
    decay = sample_weights(ReweighterConfig(kind="time_decay", half_life_days=5), panel, inst, day)
    np.testing.assert_allclose(decay, 0.5 ** ((last - day) / 5), rtol=1e-6)
    assert decay[day == last].tolist() == [1.0] * int((day == last).sum())
    klass = sample_weights(ReweighterConfig(kind="class", class_path="test_loop:HalfOnMondays"), panel, inst, day)
    np.testing.assert_array_equal(klass, np.where(panel.calendar[day].day_of_week == 0, 0.5, 1.0))
    with pytest.raises(ValueError, match="weight column"):
        sample_weights(ReweighterConfig(kind="column"), panel, inst, day)
    column = np.random.default_rng(1).random(panel.label_raw.shape).astype(np.float32)
    weighted = ProcessedPanel(**{**panel.__dict__, "weight": column})
    np.testing.assert_array_equal(sample_weights(ReweighterConfig(kind="column"), weighted, inst, day),
                                  column[inst, day])
    assert (sample_weights(ReweighterConfig(), panel, inst, day) == 1).all()


def test_bad_shards_are_rejected() -> None:
    cfg, panel = tiny_config(n_epochs=1), tiny_panel(n_inst=12, n_days=60)
    shard = make_shard(cfg, panel)
    empty = SampleShard(shard.train_inst[:0], shard.train_day[:0], shard.train_weight[:0], shard.valid_inst,
                        shard.valid_day)
    with pytest.raises(ValueError, match="no full batch"):
        train_loop(cfg, panel, empty, lambda m, s: None, device=torch.device("cpu"))
    inst, day = np.nonzero(np.isnan(panel.label_learn) & panel.membership)
    dropped = SampleShard(inst, day, np.ones(len(inst), np.float32), shard.valid_inst, shard.valid_day)
    with pytest.raises(ValueError, match="finite learn label"):
        train_loop(cfg, panel, dropped, lambda m, s: None, device=torch.device("cpu"))


def test_streamed_panel_trains_and_predicts_exactly_as_a_resident_one(caplog) -> None:
    panel = tiny_panel(n_inst=12, n_days=60)
    results = {}
    for mode in ("always", "never"):
        cfg = tiny_config(n_epochs=3, deterministic=True)
        cfg.resources.panel_on_device = mode
        with caplog.at_level("INFO", logger="distgru.training.loop"):
            results[mode], _ = run(cfg, panel)
    assert any("streamed from host memory" in r.getMessage() for r in caplog.records)
    assert any("resident on cpu" in r.getMessage() for r in caplog.records)
    assert untimed(results["never"].history) == untimed(results["always"].history)
    model = loop_module.build_model(tiny_config().model, 5)
    inst, day = sample_index(panel, "test", "infer")
    np.testing.assert_array_equal(predict(model, panel, inst, day, 5, 64, "cpu", "never"),
                                  predict(model, panel, inst, day, 5, 64, "cpu", "always"))


def test_auto_placement_keeps_the_panel_on_the_device_while_it_takes_at_most_half_its_free_memory() -> None:
    from distgru.training.windows import keep_on_device
    gpu = torch.device("cuda", 0)  # a descriptor only: free memory is given, no GPU is touched
    assert keep_on_device("auto", 50, gpu, free_bytes=100) and not keep_on_device("auto", 51, gpu, free_bytes=100)
    assert keep_on_device("auto", 10**15, torch.device("cpu"))
    assert not keep_on_device("never", 1, gpu, free_bytes=100) and keep_on_device("always", 10**15, gpu, 0)


def test_a_state_of_another_format_is_refused_with_what_to_do(tmp_path) -> None:
    cfg, panel = tiny_config(n_epochs=1), tiny_panel(n_inst=12, n_days=60)
    _, reports = run(cfg, panel)
    payload = reports[-1][1].to_payload()
    torch.save({**payload, "format_version": 1}, tmp_path / "state.pt")
    with pytest.raises(StateFormatError, match="format 1.*train again"):
        TrainState.load(tmp_path)
    # distgru 0.1's pickled dict (numpy RNG state inside) is refused by weights_only, not executed.
    torch.save({"epoch": 0, "rng": {"numpy": np.random.get_state()}}, tmp_path / "state.pt")
    with pytest.raises(StateFormatError, match="not a distgru"):
        TrainState.load(tmp_path)
