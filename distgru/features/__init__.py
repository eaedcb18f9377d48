"""Feature engine: qlib's Alpha158/Alpha360 and label expressions, computed vectorised on a BarPanel.

Importing the package registers the feature sets (:mod:`distgru.features.sets`): each set's module is imported here.
"""

from distgru.features import alpha158, alpha360
from distgru.features.compute import compute_features, feature_frame
from distgru.features.expr import ExpressionError, evaluate, parse
from distgru.features.sets import (
    FEATURE_SETS,
    FeatureSet,
    check_features,
    feature_definitions,
    get_feature_set,
    label_expression,
    register_feature_set,
)
from distgru.features.table import FeatureTable

__all__ = [
    "FEATURE_SETS", "ExpressionError", "FeatureSet", "FeatureTable", "alpha158", "alpha360", "check_features",
    "compute_features", "evaluate", "feature_definitions", "feature_frame", "get_feature_set", "label_expression",
    "parse", "register_feature_set",
]
