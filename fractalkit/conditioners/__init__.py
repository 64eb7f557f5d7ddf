"""Conditioners: what a model is conditioned on (class labels, feature vectors, sequences, yours).

A :class:`ConditionerConfig` (registered like any component, saved with the model) builds a
:class:`Conditioner` module that maps a user condition ``c`` for N instances to the top
level's condition tokens ``[N, T, D]`` and owns the learned null condition used by ``c=None``,
classifier-free guidance and condition dropout. Pass one as ``Fractal(..., conditioner=...)``;
``Fractal(..., num_classes=K)`` builds :class:`ClassLabel` ``(K)``.
"""

from fractalkit.conditioners.base import Conditioner, ConditionerConfig, check_instances
from fractalkit.conditioners.class_label import (
    ClassLabel,
    ClassLabelConditioner,
    Unconditional,
    UnconditionalConditioner,
)
from fractalkit.conditioners.sequence import Padded, Sequence, SequenceConditioner
from fractalkit.conditioners.vector import Vector, VectorConditioner

__all__ = [
    "ClassLabel",
    "ClassLabelConditioner",
    "Conditioner",
    "ConditionerConfig",
    "Padded",
    "Sequence",
    "SequenceConditioner",
    "Unconditional",
    "UnconditionalConditioner",
    "Vector",
    "VectorConditioner",
    "check_instances",
]
