"""Procedures, not parameters: random draws, orders, mask and guidance schedules, logit shaping."""

from fractalkit.sampling.canvas import Canvas
from fractalkit.sampling.guidance import guided_logits
from fractalkit.sampling.options import DecodeContext, Progress, SampleOptions, ScoreContext
from fractalkit.sampling.rng import random_orders, sample_categorical, truncated_normal, uniform
from fractalkit.sampling.schedules import decode_counts, guidance_at, training_mask_counts

__all__ = [
    "Canvas",
    "DecodeContext",
    "Progress",
    "SampleOptions",
    "ScoreContext",
    "decode_counts",
    "guidance_at",
    "guided_logits",
    "random_orders",
    "sample_categorical",
    "training_mask_counts",
    "truncated_normal",
    "uniform",
]
