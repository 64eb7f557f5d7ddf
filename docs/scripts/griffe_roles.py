"""Griffe extension used by the docs build: Sphinx-style roles in docstrings become links.

fractalkit's docstrings write cross-references as reStructuredText roles (``:class:`Fractal```,
``:meth:`AbstractGenerator.score```). mkdocstrings parses Google-style docstrings as Markdown
and would print those roles literally. This extension, loaded by ``mkdocs.yml``, rewrites each
role before rendering: into an autorefs link ``[`Fractal`][fractalkit.fractal.Fractal]`` when
the name resolves to an object that the API pages render (public, with a docstring), and into
plain code otherwise, so a role can never break the strict build.

The docstrings also document related arguments together (``value_mean, value_std: ...``),
which griffe's Google parser reads as one unknown parameter. Inside ``Args:`` sections such an
entry is expanded into one entry per name with the same description, so griffe can still warn
(and the strict build fail) when a documented parameter is not in the signature.

Google style (and Sphinx's napoleon) accepts ``Example:`` as well as ``Examples:``; griffe
knows only the plural and would render a singular section's doctest as quoted text, so the
singular header is renamed.

Docstrings in the source stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|obj|exc):`(~?)([\w.]+)(?:\(\))?`")
PACKAGE = "fractalkit"
ARGS_HEADER = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Keyword Args|Other Parameters):\s*$")
EXAMPLE_HEADER = re.compile(r"^(\s*)Example:\s*$", re.M)
COMBINED = re.compile(r"^(\s+)(\w+(?:\s*,\s*\w+)+)(\s*:.*)$")


def split_combined_args(text: str) -> str:
    """Expand ``a, b: description`` entries of ``Args:`` sections into one entry per name."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        header = ARGS_HEADER.match(line)
        if header:
            section_indent = len(header.group(1))
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None  # a dedent ends the section
        match = COMBINED.match(line) if section_indent is not None else None
        if match and len(match.group(1)) > section_indent:  # type: ignore[operator]
            lead, names, rest = match.groups()
            block = [rest]  # the description and its continuation lines
            i += 1
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(lead)
            ):
                block.append(lines[i])
                i += 1
            while len(block) > 1 and not block[-1].strip():  # keep blank lines after the entry
                block.pop()
                i -= 1
            for name in (n.strip() for n in names.split(",")):
                out.append(lead + name + block[0])
                out.extend(block[1:])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _objects(obj: griffe.Object):
    """Every object defined in ``obj`` (aliases skipped: they share their target's docstring)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


def _lookup(path: str, loader: griffe.GriffeLoader) -> griffe.Object | None:
    try:
        target = loader.modules_collection.get_member(path)
    except (KeyError, ValueError, AttributeError):
        return None
    try:
        return target.final_target if target.is_alias else target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(name: str, scope: griffe.Object, loader: griffe.GriffeLoader) -> griffe.Object | None:
    """The object ``name`` refers to from ``scope`` (Python's scoping, roughly), or None."""
    first, _, rest = name.partition(".")
    if first == PACKAGE:
        return _lookup(name, loader)
    try:
        head = scope.resolve(first)
    except griffe.NameResolutionError:
        return None
    return _lookup(f"{head}.{rest}" if rest else head, loader)


def _rendered(obj: griffe.Object) -> bool:
    """Whether the API pages render ``obj`` with its own heading (and so its own anchor)."""
    parts = obj.canonical_path.split(".")
    if parts[0] != PACKAGE or any(p.startswith("_") for p in parts):
        return False
    node: griffe.Object | None = obj
    while node is not None and not node.is_module:
        if not node.docstring:
            return False
        node = node.parent
    return obj.canonical_path != PACKAGE


class RolesToLinks(griffe.Extension):
    """Rewrite ``:role:`name``` in every docstring of the package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        for obj in _objects(pkg):
            if obj.docstring is None or ":" not in obj.docstring.value:
                continue
            value = EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = split_combined_args(value)

            def replace(match: re.Match[str], scope: griffe.Object = obj) -> str:
                tilde, name = match.groups()
                text = name.rsplit(".", 1)[-1] if tilde else name
                target = _resolve(name, scope, loader)
                if target is None or not _rendered(target):
                    return f"`{text}`"
                return f"[`{text}`][{target.canonical_path}]"

            obj.docstring.value = ROLE.sub(replace, obj.docstring.value)
