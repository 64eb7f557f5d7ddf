"""THE table of small fractals used by the contract tests (torch.distributions' EXAMPLES idea).

Every level, leaf and partitioner appears in at least one row, with and without classes; a new
component joins by adding a row here, and every generic contract test then runs on it
(``tests/contract/test_table.py`` checks the coverage). The checks themselves are the shipped
kit, :mod:`fractalkit.testing`, which plug-in authors call the same way.

Most rows model a space small enough to enumerate (at most a few thousand configurations), so
normalisation and chi-square checks can run on them. Models are built deterministically and
their weights perturbed (:func:`roughen`) so that their distributions are far from uniform:
a test that passes on a near-uniform model proves little.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fractalkit import (
    ARLevelConfig,
    CategoricalLeafConfig,
    Channels,
    Fractal,
    ImagePatches,
    MARLevelConfig,
    RGBLeafConfig,
    SequenceChunks,
    SummaryConfig,
)
from fractalkit.graphs import GraphEncoding
from fractalkit.leaves import DiscretizedLogisticLeafConfig, SlotCategoricalLeafConfig
from fractalkit.partition import GraphSubsets
from fractalkit.testing import enumerable as _enumerable
from fractalkit.testing import fixed_orders, random_data, roughen

__all__ = [
    "BY_NAME",
    "EXAMPLES",
    "Example",
    "ar",
    "enumerable",
    "fixed_orders",
    "labels_for",
    "mar",
    "pick",
    "random_data",
]


def ar(**kw) -> ARLevelConfig:
    """A tiny AR level config (width 16, one block, 2 heads) with overrides."""
    return ARLevelConfig(**{"width": 16, "depth": 1, "heads": 2, **kw})


def mar(**kw) -> MARLevelConfig:
    """A tiny MAR level config (width 16, one block, 2 heads) with overrides."""
    return MARLevelConfig(**{"width": 16, "depth": 1, "heads": 2, **kw})


@dataclass(frozen=True)
class Example:
    """One row of the table.

    Attributes:
        name: test id.
        make: builds the untrained (roughened) model, deterministically.
        num_classes: K of the model (0: unconditional).
        bound: ``log_prob`` is a bound (guiding pixel), not exact.
        tags: free-form labels used to pick rows ("ar", "mar", "mixed", "guide", "table", ...).
    """

    name: str
    make: Callable[[], Fractal]
    num_classes: int = 0
    bound: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)

    def build(self, dtype: torch.dtype = torch.float64) -> Fractal:
        """The model in eval mode and ``dtype`` (float64 by default: exactness is tested there)."""
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = self.make()
        return model.to(dtype).eval()

    def __repr__(self) -> str:  # pytest ids
        return self.name


def _fractal(levels, leaf, *, num_classes=0, seed=0, scale=0.6) -> Fractal:
    model = Fractal(levels, leaf, num_classes=num_classes, label_drop=0.1)
    return roughen(model, seed=seed, scale=scale)


# Shared small spaces. "Pixels" of 2 channels on a 2x2 grid, 2 values: 256 configurations.
def _pixels_channels(top, second, *, v=2, num_classes=0, seed=0, scale=0.6):
    return _fractal(
        [(ImagePatches(2, 1, channels=2), top), (Channels((2, 1, 1)), second)],
        CategoricalLeafConfig(num_values=v),
        num_classes=num_classes,
        seed=seed,
        scale=scale,
    )


def _three_levels(first, second, third, *, num_classes=0, seed=0, scale=0.6):
    # (2, 2, 2) -> 2 columns (2, 2, 1) -> 2 pixels (2, 1, 1) -> 2 channels (1, 1, 1): 256 configs.
    return _fractal(
        [
            (ImagePatches(2, (2, 1), channels=2), first),
            (ImagePatches((2, 1), 1, channels=2), second),
            (Channels((2, 1, 1)), third),
        ],
        CategoricalLeafConfig(num_values=2),
        num_classes=num_classes,
        seed=seed,
        scale=scale,
    )


# roughen adds noise in ``model.parameters()`` order. Since the conditioner became an ordinary
# submodule its parameters come after the levels' (they came first), so every seed perturbs a
# conditional model differently; three rows then came out so peaked that the chi-square checks
# lost their power (too few cells, or the guided and unguided laws not told apart). Their seeds
# are the first unused ones with which every test of the row passes: mar_mar_cond 3 -> 20
# (17-19 left the tempered test 4-8 cells), ar_mar_ar_cond 6 -> 21, ar_rgb_cond 9 -> 22.
EXAMPLES: list[Example] = [
    Example(
        "ar_ar",
        lambda: _pixels_channels(ar(), ar()),
        tags=frozenset({"ar", "patches", "channels", "categorical"}),
    ),
    Example(
        "ar_ar_cond",
        lambda: _pixels_channels(ar(), ar(block="vit", rope=False), num_classes=3, seed=1),
        num_classes=3,
        tags=frozenset({"ar", "patches", "channels", "categorical"}),
    ),
    Example(
        "mar_mar",
        lambda: _pixels_channels(mar(), mar(neighbours=False), seed=2, scale=0.2),
        tags=frozenset({"mar", "patches", "channels", "categorical"}),
    ),
    Example(
        "mar_mar_cond",
        lambda: _pixels_channels(mar(block="llama"), mar(), num_classes=3, seed=20, scale=0.4),
        num_classes=3,
        tags=frozenset({"mar", "patches", "channels", "categorical"}),
    ),
    Example(
        "mar_ar_cond",
        lambda: _pixels_channels(mar(), ar(), v=3, num_classes=2, seed=4),  # 3**8 = 6561 configs
        num_classes=2,
        tags=frozenset({"mixed", "mar", "ar", "patches", "channels", "categorical"}),
    ),
    Example(
        "mar_ar_mar",
        lambda: _three_levels(mar(), ar(), mar(neighbours=False), seed=5, scale=0.15),
        tags=frozenset({"mixed", "mar", "ar", "patches", "channels", "categorical"}),
    ),
    Example(
        "ar_mar_ar_cond",
        lambda: _three_levels(ar(), mar(), ar(), num_classes=2, seed=21, scale=0.9),
        num_classes=2,
        tags=frozenset({"mixed", "mar", "ar", "patches", "channels", "categorical"}),
    ),
    Example(
        # 4 levels on (2, 4, 4), 4 values: far too many configurations to enumerate.
        "ar_mar_ar_mar_4level",
        lambda: _fractal(
            [
                (ImagePatches(4, 2, channels=2), ar()),
                (ImagePatches(2, (1, 2), channels=2), mar()),
                (ImagePatches((1, 2), 1, channels=2), ar()),
                (Channels((2, 1, 1)), mar(neighbours=False)),
            ],
            CategoricalLeafConfig(num_values=4),
            seed=7,
        ),
        tags=frozenset({"mixed", "mar", "ar", "patches", "channels", "categorical", "deep"}),
    ),
    Example(
        # MAR with a guiding pixel below the top (the paper's 256x256 layout) and an RGB leaf
        # over 2 channels: log_prob is a bound, log p(g) + log p(x | g).
        "mar_guide_rgb",
        lambda: _fractal(
            [
                (ImagePatches(2, (2, 1), channels=2), mar()),
                (
                    ImagePatches((2, 1), 1, channels=2),
                    mar(summary=SummaryConfig(RGBLeafConfig(width=8, depth=1, heads=2, num_values=2))),
                ),
            ],
            RGBLeafConfig(width=8, depth=1, heads=2, num_values=2),
            num_classes=2,
            seed=8,
            scale=0.4,
        ),
        num_classes=2,
        bound=True,
        tags=frozenset({"mar", "guide", "patches", "rgb"}),
    ),
    Example(
        # The guiding pixel at the top level (one g per instance), unconditional.
        "mar_guide_top",
        lambda: _fractal(
            [
                (
                    ImagePatches((2, 1), 1, channels=2),
                    mar(summary=SummaryConfig(RGBLeafConfig(width=8, depth=1, heads=2, num_values=3))),
                ),
            ],
            RGBLeafConfig(width=8, depth=1, heads=2, num_values=3),
            seed=13,
            scale=0.4,
        ),
        bound=True,
        tags=frozenset({"mar", "guide", "patches", "rgb"}),
    ),
    Example(
        # RGB leaf under an AR level: 3 channels, 1x2 pixels, 3 values: 729 configurations.
        "ar_rgb_cond",
        lambda: _fractal(
            [(ImagePatches((1, 2), 1, channels=3), ar())],
            RGBLeafConfig(width=8, depth=1, heads=2, num_values=3),
            num_classes=2,
            seed=22,
            scale=0.4,
        ),
        num_classes=2,
        tags=frozenset({"ar", "patches", "rgb"}),
    ),
    Example(
        # The Channels partitioner at the top of a 1-D event, categorical leaf: 4**3 = 64.
        "channels_ar",
        lambda: _fractal([(Channels((3,)), ar())], CategoricalLeafConfig(num_values=4), seed=10, scale=0.2),
        tags=frozenset({"ar", "channels", "categorical"}),
    ),
    Example(
        # 1-D sequences in chunks with one-hot ("table") embeddings: 3**6 = 729 configurations.
        "chunks_table",
        lambda: _fractal(
            [
                (SequenceChunks(6, 2), mar(embed="table")),
                (SequenceChunks(2, 1), ar(embed="table")),
            ],
            CategoricalLeafConfig(num_values=3),
            seed=11,
            scale=0.4,
        ),
        tags=frozenset({"mixed", "mar", "ar", "chunks", "categorical", "table"}),
    ),
    Example(
        # A categorical leaf over several elements at once (independent given the condition).
        "chunks_multi_leaf_cond",
        lambda: _fractal(
            [(SequenceChunks(4, 2), ar(embed="table"))],
            CategoricalLeafConfig(num_values=3),
            num_classes=3,
            seed=12,
            scale=0.4,
        ),
        num_classes=3,
        tags=frozenset({"ar", "chunks", "categorical", "table"}),
    ),
    Example(
        # Graphs of 2 nodes encoded as 2 rows of width 2 (GraphEncoding's layout): node subsets,
        # then each node row's elements, categorical leaf: 3**4 = 81 configurations.
        "graph_subsets",
        lambda: _fractal(
            [
                (GraphSubsets(2, 2, 2), ar(embed="table")),
                (SequenceChunks(2, 1), ar(embed="table")),
            ],
            CategoricalLeafConfig(num_values=3),
            seed=14,
            scale=0.4,
        ),
        tags=frozenset({"ar", "graph", "chunks", "categorical", "table"}),
    ),
    Example(
        # The same graph space with slot kinds (node slots 0..2, edge slot 0..1, one structural
        # zero): 3 * 1 * 3 * 2 = 18 configurations of probability > 0 among 81, class-conditional.
        "graph_slot_kinds_cond",
        lambda: _fractal(
            [
                (GraphSubsets(2, 2, 2), mar(embed="table")),
                (SequenceChunks(2, 1), ar(embed="table")),
            ],
            SlotCategoricalLeafConfig(**GraphEncoding(2, 2, 1).slot_kinds_config()),
            num_classes=2,
            seed=16,
            scale=0.4,
        ),
        num_classes=2,
        tags=frozenset({"mixed", "mar", "ar", "graph", "chunks", "categorical", "table", "slots"}),
    ),
    Example(
        # The discretised-logistic leaf (a plug-in) over 1-D chunks of 5 ordered values.
        "chunks_logistic_cond",
        lambda: _fractal(
            [(SequenceChunks(4, 2), mar()), (SequenceChunks(2, 1), ar())],
            DiscretizedLogisticLeafConfig(num_values=5, num_components=2),
            num_classes=2,
            seed=15,
            scale=0.4,
        ),
        num_classes=2,
        tags=frozenset({"mixed", "mar", "ar", "chunks", "logistic"}),
    ),
]

BY_NAME: dict[str, Example] = {e.name: e for e in EXAMPLES}


def enumerable(example: Example) -> bool:
    """Whether the example's space is small enough for the kit to enumerate."""
    return _enumerable(example.build())


def pick(*tags: str, exclude: tuple[str, ...] = ()) -> list[Example]:
    """Rows carrying every tag in ``tags`` and none in ``exclude``."""
    return [
        e for e in EXAMPLES if set(tags) <= e.tags and not (set(exclude) & e.tags)
    ]


def labels_for(example: Example, n: int, *, seed: int = 0) -> torch.Tensor | None:
    """Random labels ``[n]`` for a conditional example, None for an unconditional one."""
    if not example.num_classes:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, example.num_classes, (n,), generator=g)
