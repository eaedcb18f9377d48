"""Feature sets by name. Each registers itself where it is defined (:mod:`~distgru.features.alpha158`,
:mod:`~distgru.features.alpha360`) with :func:`register_feature_set`, carrying its properties; everything that
needs a set's properties (the engine, the label default, the model-input check) asks the registry.

A new set is one module that decorates its definitions function, plus an import in ``distgru/features/__init__.py``
so that importing the package registers it. Config (the lowest floor) only holds the name as a string;
:func:`check_features` is where it is checked, before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from distgru.config import ConfigError, FeatureConfig
from distgru.features.expr import ExpressionError, parse

Definitions = Callable[[], list[tuple[str, str]]]
"""A set's columns: (name, qlib expression) each, in the set's native (qlib) order."""

DEFAULT_LABEL = "Ref($close, -2) / Ref($close, -1) - 1"
"""qlib's label for Alpha158 and Alpha360: the return from close(T+1) to close(T+2)."""


def _strip_window(name: str) -> str:
    return name.rstrip("0123456789")


@dataclass(frozen=True)
class FeatureSet:
    """A registered feature set and what the rest of distgru needs to know about it."""

    name: str
    """The value of ``features.set`` that selects it."""
    definitions: Definitions
    """Its columns, computed on demand."""
    group: Callable[[str], str] = _strip_window
    """The family a column belongs to, for progress lines (default: the name without its trailing digits)."""
    label: str = DEFAULT_LABEL
    """The label expression used when ``features.label`` is null."""
    flat: bool = False
    """One day's vector is itself a history ([T, d_feat], as Alpha360's 60 days × 6 fields): models read it with
    ``model.input: flat``, and windows of such days are no qlib setup."""


FEATURE_SETS: dict[str, FeatureSet] = {}


def register_feature_set(name: str | None = None, *, group: Callable[[str], str] = _strip_window,
                         label: str = DEFAULT_LABEL, flat: bool = False) -> Callable[[Definitions], Definitions]:
    """Decorator registering a definitions function as a feature set (``name`` defaults to the function's name);
    the function is returned unchanged."""

    def register(definitions: Definitions) -> Definitions:
        key = name or definitions.__name__
        if key in FEATURE_SETS:
            raise ValueError(f"feature set {key!r} is already registered")
        FEATURE_SETS[key] = FeatureSet(key, definitions, group, label, flat)
        return definitions

    return register


def get_feature_set(name: str, key: str = "features.set") -> FeatureSet:
    """The set registered as ``name``; otherwise a ConfigError naming ``key``, the value and the choices."""
    if name not in FEATURE_SETS:
        raise ConfigError(f"{key}: {name!r} is not a feature set; valid choices: {', '.join(sorted(FEATURE_SETS))}")
    return FEATURE_SETS[name]


def feature_definitions(feature_set: str = "alpha158", columns: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, expression) of a feature set, filtered like qlib's FilterCol: native order kept, unknowns an error
    (ConfigError on ``features.set`` / ``features.columns``)."""
    defs = get_feature_set(feature_set).definitions()
    if columns is None:
        return defs
    names = {n for n, _ in defs}
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ConfigError(f"features.columns: {feature_set} has no column(s) {unknown}; valid names: "
                          f"{', '.join(n for n, _ in defs)}")
    keep = set(columns)
    return [(n, e) for n, e in defs if n in keep]


def label_expression(features: FeatureConfig) -> str:
    """The label ``features`` asks for: ``label_horizon``'s return, else ``label``, else the set's default."""
    if features.label_horizon is not None:
        return f"Ref($close, -{features.label_horizon + 1}) / Ref($close, -1) - 1"
    if features.label is not None:
        return features.label
    return get_feature_set(features.set).label


def check_features(features: FeatureConfig) -> FeatureSet:
    """The set ``features`` selects, after checking its name, columns and label (ConfigErrors naming the key)."""
    feature_set = get_feature_set(features.set)
    feature_definitions(features.set, features.columns)
    try:
        parse(label_expression(features))
    except ExpressionError as e:
        raise ConfigError(f"features.label: {e}") from None
    return feature_set
