"""The feature-set and processor registries: bad names and options are ConfigErrors naming the key, the value and
the choices, before any work; a set or processor registered here, in a test module, is usable from a config."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from test_features_compute import make_panel
from test_pipeline import make_cfg

import distgru.features
from distgru.config import ConfigError
from distgru.features import FEATURE_SETS, compute_features, feature_frame, register_feature_set
from distgru.processing import PROCESSORS, Processor, ProcessorState, cache, check_config, prepare_panel, register
from distgru.processing.pipeline import feature_inputs, load_bars
from distgru.processing.processors import ChainData, Fillna, RobustZScoreNorm, Stats
from distgru.processing.versions import processing_code_version


@pytest.fixture
def returns_set() -> Iterator[str]:
    """A two-column feature set with its own default label, registered as the shipped sets are."""

    @register_feature_set("returns", label="Ref($close, -1) / $close - 1")
    def returns() -> list[tuple[str, str]]:
        return [("RET1", "$close/Ref($close, 1) - 1"), ("RANGE", "$high/$low")]

    yield "returns"
    del FEATURE_SETS["returns"]


@pytest.fixture
def scale_processor() -> Iterator[type[Processor]]:
    """A processor with one option, registered as the shipped processors are."""

    @register
    @dataclass(frozen=True, kw_only=True)
    class Scale(Processor):
        """Multiplies by ``factor``."""

        factor: float = 2.0
        """The multiplier."""

        def apply(self, data: ChainData, stats: Stats) -> None:
            values = data.group(self.fields_group)
            values *= np.float32(self.factor)
            data.set_group(self.fields_group, values)

    yield Scale
    del PROCESSORS["Scale"]


def error(cfg_overrides: dict[str, str], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(make_cfg(tmp_path, **cfg_overrides))
    return str(info.value)


def test_unknown_feature_set_names_key_value_and_choices(tmp_path: Path) -> None:
    message = error({"features.set": "alpha999"}, tmp_path)
    assert message == "features.set: 'alpha999' is not a feature set; valid choices: alpha158, alpha360"
    with pytest.raises(ConfigError, match="features.set: 'alpha999'"):
        compute_features(make_panel(), "alpha999")
    with pytest.raises(ConfigError, match="features.set: 'alpha999'"):
        feature_frame(make_panel(), "alpha999")


def test_unknown_columns_and_bad_label(tmp_path: Path) -> None:
    assert error({"features.columns": "[KLEN, NOPE]"}, tmp_path).startswith(
        "features.columns: alpha158 has no column(s) ['NOPE']")
    assert error({"features.label": "Mena($close, 5)"}, tmp_path).startswith("features.label:")


def test_unknown_processor_names_key_value_and_choices(tmp_path: Path) -> None:
    message = error({"processors.infer": "[{name: RobustZScoreNorm}, {name: ZScore}]"}, tmp_path)
    assert message.startswith("processors.infer[1].name: 'ZScore' is not a processor; valid choices: CSRankNorm, "
                              "CSZScoreNorm, DropnaLabel, Fillna, RobustZScoreNorm")


def test_unknown_or_mistyped_processor_option_names_the_key(tmp_path: Path) -> None:
    message = error({"processors.infer": "[{name: RobustZScoreNorm, clipp: true}]"}, tmp_path)
    assert "'processors.infer[0].clipp'" in message and "valid keys here: fields_group, clip_outlier" in message
    message = error({"processors.learn": "[{name: DropnaLabel}, {name: Fillna, fill_value: abc}]"}, tmp_path)
    assert message.startswith("processors.learn[1].fill_value: expected a number, got 'abc'")


def test_chain_rules_and_model_input_are_checked_before_any_work(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distgru.processing.pipeline, "load_bars", lambda *a: pytest.fail("loaded bars"))
    with pytest.raises(ConfigError, match=r"processors\.infer\[0\]: DropnaLabel is learn-only"):
        prepare_panel(make_cfg(tmp_path, **{"processors.infer": "[{name: DropnaLabel}]"}), progress=False)
    with pytest.raises(ConfigError, match="model.input: 'flat' needs a feature set .* \\(alpha360\\)"):
        prepare_panel(make_cfg(tmp_path, **{"model.input": "flat"}), progress=False)
    with pytest.raises(ConfigError, match="model.input: 'window' over alpha360 is not a qlib setup"):
        prepare_panel(make_cfg(tmp_path, **{"features.set": "alpha360"}), progress=False)


def test_a_feature_set_registered_in_a_test_module_is_usable(returns_set: str) -> None:
    panel = make_panel()
    table = compute_features(panel, returns_set)
    close = panel.fields["close"][0]
    assert table.names == ("RET1", "RANGE")
    np.testing.assert_allclose(table.values[0, 1:, 0], close[1:] / close[:-1] - 1, rtol=1e-6)
    np.testing.assert_allclose(table.label[0, :-1], close[1:] / close[:-1] - 1, rtol=1e-6)  # the set's label
    assert distgru.features.label_expression(distgru.config.FeatureConfig(set=returns_set)) == (
        "Ref($close, -1) / $close - 1")


def test_registered_set_and_processor_from_a_config(returns_set: str, scale_processor: type[Processor],
                                                     tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, **{"features.set": returns_set, "processors.infer": "[{name: Scale, factor: 3.0}]"})
    panel, state = prepare_panel(cfg, progress=False)
    assert panel.feature_names == ("RET1", "RANGE") and state.infer == [scale_processor(factor=3.0)]
    assert state.label_expression == "Ref($close, -1) / $close - 1"  # the set's default label
    table = compute_features(load_bars(cfg.data), returns_set)
    np.testing.assert_array_equal(panel.features, table.values * np.float32(3.0))
    assert ProcessorState.from_dict(state.to_dict()).infer == state.infer


def test_states_saved_with_the_old_flat_processor_options_still_load() -> None:
    old = {"name": "Fillna", "fields_group": "feature", "clip_outlier": True, "fill_value": -1.0}
    state = {"feature_set": "alpha158", "feature_names": ["KLEN"], "columns": ["KLEN"], "label_expression": "x",
             "fit_start": "2020-01-01", "fit_end": "2020-02-01", "infer_stats": [{}, {}], "learn_stats": [],
             "infer": [{"name": "RobustZScoreNorm", "fields_group": "feature", "clip_outlier": False,
                        "fill_value": 0.0}, old], "learn": []}
    loaded = ProcessorState.from_dict(state)
    assert loaded.infer == [RobustZScoreNorm(clip_outlier=False), Fillna(fill_value=-1.0)]
    state["infer"] = [{"name": "Winsorize"}]
    with pytest.raises(ConfigError, match=r"processor state infer\[0\]\.name: 'Winsorize' is not a processor"):
        ProcessorState.from_dict(state)


def test_registered_code_outside_the_packages_keys_the_caches(returns_set: str, scale_processor: type[Processor],
                                                              tmp_path: Path) -> None:
    assert processing_code_version([scale_processor()]) != processing_code_version()  # this module is hashed
    assert processing_code_version([Fillna()]) == processing_code_version()
    bars = load_bars(make_cfg(tmp_path).data)
    key = cache.make_key(feature_inputs(bars, returns_set, None, "$close"))
    edited = replace(FEATURE_SETS[returns_set], definitions=lambda: [("RET2", "$close/Ref($close, 2)")])
    FEATURE_SETS[returns_set] = edited
    assert cache.make_key(feature_inputs(bars, returns_set, None, "$close")) != key
