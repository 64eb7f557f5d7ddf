"""Procedures, not parameters: random draws, orders, mask and guidance schedules, logit shaping."""

# Re-exported for existing imports: the options and contexts are the protocol's.
from fractalkit.protocol import DecodeContext, Progress, SampleOptions, ScoreContext
from fractalkit.sampling.guidance import guided_logits
from fractalkit.sampling.rng import random_orders, sample_categorical, truncated_normal, uniform
from fractalkit.sampling.schedules import decode_counts, guidance_at, training_mask_counts

__all__ = [
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
