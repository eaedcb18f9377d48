"""Bars → raw features (cached) → qlib's processors → the ProcessedPanel training consumes.

``check_config`` checks a config against the feature-set and processor registries without loading anything: call
it wherever a config is validated before Ray starts.
"""

from distgru.processing.pipeline import check_config, prepare_inference, prepare_panel
from distgru.processing.processors import PROCESSORS, Processor, ProcessorState, register

__all__ = ["PROCESSORS", "Processor", "ProcessorState", "check_config", "prepare_inference", "prepare_panel",
           "register"]
