"""Config loading: every shipped YAML loads; bad keys/values fail naming the key, the value and the choices."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml

from distgru.config import Config, ConfigError, config_from_dict, load_config, to_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
SEARCHES = sorted((CONFIG_DIR / "search").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_configs_load_and_round_trip(path: Path) -> None:
    cfg = load_config(path)
    assert config_from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.stem)
def test_model_searches_choose_on_valid_only_within_budget(path: Path) -> None:
    from distgru.tuning.space import check_space

    cfg = load_config(path)
    check_space(cfg)
    parity = load_config(CONFIG_DIR / "gru_alpha158.yaml")
    # Same protocol as the parity run (csi300-2010), test never scored, ranked by valid IC, ≤ 12 trials a family.
    assert (cfg.dataset.train, cfg.dataset.valid, cfg.dataset.test) == (
        parity.dataset.train, parity.dataset.valid, parity.dataset.test)
    fit = (parity.processors.fit_start, parity.processors.fit_end)
    assert (cfg.processors.fit_start, cfg.processors.fit_end) == fit
    assert cfg.tune is not None and cfg.tune.score_test is False
    assert (cfg.tune.metric, cfg.train.metric) == ("valid_ic", "ic")
    assert cfg.tune.num_samples <= 12 and cfg.tune.seed is not None


def test_gru_alpha158_mirrors_qlib_workflow() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "gru_alpha158.yaml")
    assert (cfg.model.name, cfg.model.d_feat, cfg.model.hidden_size, cfg.model.num_layers) == ("gru", 20, 64, 2)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.early_stop, cfg.train.metric) == (2e-4, 800, 10, "loss")
    assert (cfg.train.clip, cfg.train.clip_value, cfg.dataset.step_len) == ("value", 3.0, 20)
    assert len(cfg.features.columns or []) == 20
    assert cfg.dataset.train == ("2010-01-04", "2016-12-31")
    assert [p.name for p in cfg.processors.infer] == ["RobustZScoreNorm", "Fillna"]
    assert [p.name for p in cfg.processors.learn] == ["DropnaLabel", "CSRankNorm"]


def test_defaults_are_the_synthetic_market() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, Config) and cfg.data.source == "synthetic"


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, ["train.lr=1e-3", "dataset.step_len=5", "features.columns=[KLEN, KLOW]"])
    assert cfg.train.lr == 1e-3 and cfg.dataset.step_len == 5 and cfg.features.columns == ["KLEN", "KLOW"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=0.1", ["train.lrr", "0.1", "lr"]),
        ("model.name=tcn", ["model.name", "tcn", "'gru'", "'lstm'", "'alstm'"]),
        ("dataset.step_len=0", ["dataset.step_len", "0"]),
        ("train.batch_size=abc", ["train.batch_size", "abc"]),
        ("dataset.valid=[2018-01-01, 2017-01-01]", ["dataset.valid", "2018-01-01", "2017-01-01"]),
        ("dataset.test=[2016-01-01, 2016-06-01]", ["dataset.test", "2016-01-01"]),
        ("data.start=2019-13-45", ["data.start", "2019-13-45"]),
        ("train.reweighter.kind=magic", ["train.reweighter.kind", "magic", "'time_decay'"]),
        ("data.source=qlib", ["data.provider"]),
        ("features.columns=[]", ["features.columns"]),
    ],
)
def test_bad_values_name_key_value_and_choices(override: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for text in expected:
        assert text in str(info.value)


def test_unknown_section_and_nested_processor_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    # Processor names and options are the processor registry's to check (tests/test_registries.py).
    bad.write_text(yaml.safe_dump({"processors": {"infer": [{"clip_outlier": True}]}}))
    with pytest.raises(ConfigError, match=r"processors\.infer\[0\]\.name: required"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(None, ["trainer.lr=1"])


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings written under each dataclass field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def test_every_field_is_documented() -> None:
    import dataclasses

    from distgru.config import schema, tune

    for cls in [*vars(schema).values(), *vars(tune).values()]:
        if dataclasses.is_dataclass(cls) and isinstance(cls, type):
            docs = field_docs(cls)
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
            assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
