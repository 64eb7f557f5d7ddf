"""fractalkit: fractal generative models, generative models built from generative models.

A :class:`Fractal` splits its data with a :class:`Partitioner`, models the children with an
autoregressive level (:class:`ARLevel`, causal, raster order; :class:`MARLevel`, masked, random
order), and hands each child with its condition to the next level, down to a leaf
(:class:`RGBLeaf`, :class:`CategoricalLeaf`).
"""

from fractalkit.conditioners import (
    ClassLabel,
    Conditioner,
    ConditionerConfig,
    Sequence,
    Vector,
)
from fractalkit.config import (
    BuildContext,
    ComponentConfig,
    FractalConfig,
    LeafConfig,
    LevelConfig,
    config_from_dict,
    register,
    register_config,
)
from fractalkit.fractal import Fractal, TrainingLoss
from fractalkit.leaves import CategoricalLeaf, CategoricalLeafConfig, Leaf, RGBLeaf, RGBLeafConfig
from fractalkit.levels import (
    ARLevel,
    ARLevelConfig,
    ChildInputs,
    Level,
    MARLevel,
    MARLevelConfig,
    SummaryConfig,
    SummaryPrefix,
)
from fractalkit.partition import (
    Channels,
    ImagePatches,
    Partitioner,
    SequenceChunks,
    partitioner_from_config,
    register_partitioner,
)
from fractalkit.protocol import (
    AbstractGenerator,
    BitsPerDim,
    Generator,
    LogProb,
    Progress,
    SampleOptions,
)

# The top of the house: the Hub code builds Fractal by default, and the ImageNet wing registers
# the paper models' releases (the core below never imports the wing).
from fractalkit import hub  # isort: skip
from fractalkit import imagenet  # noqa: F401  (isort: skip)

hub.set_default_model_class(Fractal)

__version__ = "0.1.0"

__all__ = [
    "ARLevel",
    "ARLevelConfig",
    "AbstractGenerator",
    "BitsPerDim",
    "BuildContext",
    "CategoricalLeaf",
    "CategoricalLeafConfig",
    "Channels",
    "ChildInputs",
    "ClassLabel",
    "ComponentConfig",
    "Conditioner",
    "ConditionerConfig",
    "Fractal",
    "FractalConfig",
    "Generator",
    "ImagePatches",
    "Leaf",
    "LeafConfig",
    "Level",
    "LevelConfig",
    "LogProb",
    "MARLevel",
    "MARLevelConfig",
    "Partitioner",
    "Progress",
    "RGBLeaf",
    "RGBLeafConfig",
    "SampleOptions",
    "Sequence",
    "SequenceChunks",
    "SummaryConfig",
    "SummaryPrefix",
    "TrainingLoss",
    "Vector",
    "__version__",
    "config_from_dict",
    "partitioner_from_config",
    "register",
    "register_config",
    "register_partitioner",
]
