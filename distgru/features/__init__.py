"""Feature engine: qlib's Alpha158/Alpha360 and label expressions, computed vectorised on a BarPanel."""

from distgru.features.compute import compute_features, feature_definitions
from distgru.features.expr import ExpressionError, evaluate, parse
from distgru.features.table import FeatureTable

__all__ = ["ExpressionError", "FeatureTable", "compute_features", "evaluate", "feature_definitions", "parse"]
