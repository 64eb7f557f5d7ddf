"""The tutorial's custom levels (docs/tutorials/own_level.md), importable by tests.

The code is the tutorial's own, read from the page and executed here, so the two cannot drift:
``GRULevel`` and ``GRULevelConfig`` (the first runnable block up to ``# ---- using it ----``)
and ``CachedGRULevel`` (the next Python block). The config registers under kind
``"gru_tests"``, since the docs test registers the page's ``"gru"`` itself; ``CachedGRULevelConfig``
(kind ``"gru_cached_tests"``) builds the cached variant.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from fractalkit import register_config

PAGE = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "own_level.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
_DEFINITIONS = _BLOCKS[0].split("# ---- using it ----")[0].replace('@register("gru")', '@register("gru_tests")', 1)
exec(compile(_DEFINITIONS, str(PAGE), "exec", dont_inherit=True), globals())  # GRULevel, GRULevelConfig
exec(compile(_BLOCKS[1], str(PAGE), "exec", dont_inherit=True), globals())  # CachedGRULevel

GRULevel = globals()["GRULevel"]
GRULevelConfig = globals()["GRULevelConfig"]
CachedGRULevel = globals()["CachedGRULevel"]


@register_config
@dataclasses.dataclass(frozen=True)
class CachedGRULevelConfig(GRULevelConfig):
    """``GRULevelConfig`` building the tutorial's incremental :class:`CachedGRULevel`."""

    kind = "gru_cached_tests"

    def build(self, ctx):
        return CachedGRULevel(
            ctx.partitioner, ctx.child, self, cond_dim=ctx.cond_dim, cond_tokens=ctx.cond_tokens,
            normalisation=ctx.normalisation,
        )


__all__ = ["CachedGRULevel", "CachedGRULevelConfig", "GRULevel", "GRULevelConfig"]
