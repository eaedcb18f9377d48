"""Bars → raw features (cached) → qlib's processors → the ProcessedPanel training consumes."""

from distgru.processing.pipeline import prepare_inference, prepare_panel
from distgru.processing.processors import ProcessorState

__all__ = ["ProcessorState", "prepare_inference", "prepare_panel"]
