"""The plug-in author's pages say what the code does (issue 20, item 8, "Docs").

- Every Python block of the plug-in tutorials runs: runnable-marked blocks in
  ``tests/test_docs.py``, the two others here or in ``tests/own_level.py``.
- The tutorial's cached level honours ``kv_cache=False`` and advances over known children.
- ``out_tokens`` may be a config field as well as a class attribute.
- Partitioners implement the public ``split``/``merge`` (shapes still checked; ``_split`` and
  ``_merge`` still work) and may override ``positions``, which ``neighbours`` follows.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from kit.components import Strided
from own_level import CachedGRULevel, CachedGRULevelConfig, GRULevelConfig

from fractalkit import (
    CategoricalLeafConfig,
    Fractal,
    Partitioner,
    SequenceChunks,
    register,
)

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
MARKER = "<!-- runnable -->"

#: unmarked Python blocks of the tutorials, by page and first line: the test that runs each
RUN_ELSEWHERE = {
    ("own_level.md", "class CachedGRULevel(GRULevel):"): "tests/own_level.py (exec of the block)",
    ("testing.md", "# tests/test_my_level.py"): "test_the_test_suite_block_runs",
}


def _unmarked_blocks() -> list[tuple[str, str, str]]:
    """``(page, first line, code)`` of every tutorial Python block without the runnable marker."""
    found = []
    for page in sorted(TUTORIALS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^```python\s*$", line) or (i and lines[i - 1].strip() == MARKER):
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            found.append((page.name, lines[i + 1].strip(), "\n".join(lines[i + 1 : end])))
    return found


def test_every_tutorial_block_is_executed_by_a_test() -> None:
    unmarked = {(page, first) for page, first, _ in _unmarked_blocks()}
    assert unmarked == set(RUN_ELSEWHERE), (
        "a Python block of docs/tutorials/ is neither marked runnable nor run by a test: "
        f"{sorted(unmarked - set(RUN_ELSEWHERE))}; mark it '{MARKER}' (or run it in a test and "
        "list it in RUN_ELSEWHERE)"
    )


def test_the_test_suite_block_runs(monkeypatch) -> None:
    """The page's "In your test suite" example, with the tutorial's GRU as ``MyLevelConfig``."""
    code = next(c for page, first, c in _unmarked_blocks() if first == "# tests/test_my_level.py")
    package = types.ModuleType("mypackage")
    package.MyLevelConfig = GRULevelConfig
    monkeypatch.setitem(sys.modules, "mypackage", package)
    namespace: dict = {"__name__": "__test_my_level__"}
    exec(compile(code, str(TUTORIALS / "testing.md"), "exec", dont_inherit=True), namespace)
    namespace["test_my_level_meets_the_contract"]()
    namespace["test_my_level_samples_its_tempered_law"](0.5)


def _gru_calls(model: Fractal, **options) -> list[int]:
    """Sequence lengths the GRU of the model's top level saw during one ``sample`` call."""
    lengths: list[int] = []
    handle = model.levels[0].gru.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    try:
        model.sample(2, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0), **options)
    finally:
        handle.remove()
    return lengths


def test_the_tutorial_cached_level_honours_kv_cache_false() -> None:
    torch.manual_seed(0)
    model = Fractal([(SequenceChunks(4, 1), CachedGRULevelConfig(width=8))],
                    CategoricalLeafConfig(num_values=3), num_classes=2).eval()
    assert isinstance(model.levels[0], CachedGRULevel)
    assert _gru_calls(model) == [1, 1, 1, 1]  # incremental: one input per step
    assert _gru_calls(model, kv_cache=False) == [4, 4, 4, 4]  # the base class recomputes
    # Completion with known children: the cache still reads every child (steps that pick no
    # row included), so the cached and uncached paths agree.
    x = torch.tensor([[2, 0, 1, 1], [0, 2, 2, 1]])
    known = torch.tensor([[True, True, False, False], [True, False, True, False]])
    a, b = (model.complete(x, known, torch.tensor([0, 1]), kv_cache=kv,
                           generator=torch.Generator().manual_seed(3)) for kv in (True, False))
    assert torch.equal(a, b)


@register("gru_field_tokens_tests")
@dataclasses.dataclass(frozen=True)
class _FieldTokensConfig(GRULevelConfig):
    out_tokens: int = 1  # a field, as the tutorial says a configurable level may make it


def test_out_tokens_may_be_a_field() -> None:
    config = _FieldTokensConfig(width=8)
    assert "out_tokens" in {f.name for f in dataclasses.fields(config)}
    model = Fractal([(SequenceChunks(4, 2), config)], CategoricalLeafConfig(num_values=3))
    assert model.config.levels[0][1].out_tokens == 1
    assert model.config.to_dict()["levels"][0]["level"]["out_tokens"] == 1  # saved with the file
    again = Fractal.from_config(model.config)
    assert again.config == model.config


class _Snake(Partitioner):
    """A 2x3 grid of single elements in snake order, with the public method names."""

    kind = "snake_tests"

    def __init__(self) -> None:
        self.event_shape, self.child_shape, self.grid = (2, 3), (1,), (2, 3)

    def cells(self) -> list[tuple[int, int]]:
        return [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]

    def positions(self) -> torch.Tensor:
        return torch.tensor(self.cells())

    def split(self, x):
        row, col = torch.tensor(self.cells(), device=x.device).T
        return x[:, row, col][..., None]

    def merge(self, children):
        row, col = torch.tensor(self.cells(), device=children.device).T
        out = children.new_zeros(children.shape[0], 2, 3)
        out[:, row, col] = children[..., 0]
        return out

    def config(self):
        return {"kind": self.kind}


def test_partitioners_implement_public_split_and_merge() -> None:
    snake = _Snake()
    x = torch.arange(6).view(1, 2, 3)
    assert snake.split(x).flatten().tolist() == [0, 1, 2, 5, 4, 3]
    assert torch.equal(snake.merge(snake.split(x)), x)
    with pytest.raises(ValueError, match=r"_Snake.split: expected x of shape \[N, 2, 3\]"):
        snake.split(torch.zeros(1, 3, 2))  # the base class still checks the shape
    with pytest.raises(ValueError, match=r"_Snake.merge: expected children of shape \[N, 6, 1\]"):
        snake.merge(torch.zeros(1, 5, 1))
    # The old hook names still work (the kit's Strided implements _split/_merge).
    old = Strided(4, 2)
    assert torch.equal(old.merge(old.split(torch.arange(4)[None])), torch.arange(4)[None])
    with pytest.raises(ValueError, match=r"Strided.split: expected x"):
        old.split(torch.zeros(1, 5))


def test_neighbours_follow_overridden_positions() -> None:
    # Child 3 sits at (1, 2): its top is child 2 (0, 2), its left child 4 (1, 1).
    assert _Snake().neighbours().tolist() == [
        [-1, 1, 5, -1], [-1, 2, 4, 0], [-1, -1, 3, 1], [2, -1, -1, 4], [1, 3, -1, 5], [0, 4, -1, -1],
    ]
    # Raster positions give the raster neighbours, as before.
    assert SequenceChunks(4, 1).neighbours().tolist() == [
        [-1, 1, -1, -1], [-1, 2, -1, 0], [-1, 3, -1, 1], [-1, -1, -1, 2],
    ]

    class Stacked(_Snake):
        def positions(self):
            return torch.zeros(6, 2, dtype=torch.long)

    with pytest.raises(ValueError, match="every child on its own cell"):
        Stacked().neighbours()
