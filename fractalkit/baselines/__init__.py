"""Baselines that every likelihood in the examples is compared with (count n-gram models)."""

from fractalkit.baselines.ngram import NGramModel, choose_order

__all__ = ["NGramModel", "choose_order"]
