"""Write the documentation's diagrams, ``docs/assets/*.svg``, from hand-rolled SVG.

Run from the repository root after changing a diagram, and commit the SVG files::

    python docs/scripts/make_diagrams.py

The output is deterministic (no dates, no random state), so ``tests/test_docs.py`` checks the
committed files against a fresh run. The site never fetches anything at view time: the SVGs use
the reader's own sans-serif font.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FONT = "font-family:sans-serif"
INK = "#222"
ACCENT = "#e8590c"
MUTED = "#868e96"


def _pixel(row: int, col: int) -> tuple[int, int, int]:
    """A smooth, made-up 16x16 'image': a sunset-like gradient with a round sun."""
    sky = row / 15
    r = 70 + 170 * sky
    g = 90 + 90 * sky - 40 * max(0.0, sky - 0.6)
    b = 190 - 120 * sky
    if math.hypot(row - 9.5, col - 10.5) < 3.2:  # the sun
        r, g, b = 250, 210, 90
    if row >= 12:  # the sea
        r, g, b = 40 + 6 * (row - 12), 70 + 8 * (col % 3), 120 + 10 * (row - 12)
    return round(r), round(g), round(b)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text(
    x: float,
    y: float,
    s: str,
    *,
    size: int = 14,
    anchor: str = "middle",
    fill: str = INK,
    weight: str = "normal",
) -> str:
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        f'<text x="{x:g}" y="{y:g}" text-anchor="{anchor}" font-size="{size}" '
        f'font-weight="{weight}" fill="{fill}" style="{FONT}">{s}</text>'
    )


def _rect(
    x: float, y: float, w: float, h: float, fill: str, *, stroke: str = "none", width: float = 0
) -> str:
    extra = f' stroke="{stroke}" stroke-width="{width:g}"' if stroke != "none" else ""
    return f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" fill="{fill}"{extra}/>'


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    return (
        f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{INK}" '
        'stroke-width="2" marker-end="url(#arrow)"/>'
    )


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{title}">\n'
        f"<title>{title}</title>\n"
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker></defs>\n'
        f"{_rect(0, 0, width, height, '#ffffff')}\n"
    )
    return head + "\n".join(body) + "\n</svg>\n"


def recursion() -> str:
    """Image -> patches (level 1) -> pixels (level 2) -> R, G, B (leaf)."""
    body: list[str] = []
    top = 70
    # Panel 1: the 16x16 image cut into a 4x4 grid of 4x4 patches.
    cell, x0 = 12, 30
    for r in range(16):
        for c in range(16):
            body.append(_rect(x0 + c * cell, top + r * cell, cell, cell, _hex(_pixel(r, c))))
    for i in range(5):
        body.append(
            f'<line x1="{x0 + 48 * i}" y1="{top}" x2="{x0 + 48 * i}" y2="{top + 192}" '
            'stroke="#fff" stroke-width="2"/>'
        )
        body.append(
            f'<line x1="{x0}" y1="{top + 48 * i}" x2="{x0 + 192}" y2="{top + 48 * i}" '
            'stroke="#fff" stroke-width="2"/>'
        )
    pr, pc = 2, 3  # the highlighted patch (grid row, col)
    body.append(_rect(x0 + pc * 48, top + pr * 48, 48, 48, "none", stroke=ACCENT, width=3))
    body.append(_text(x0 + 96, 40, "level 1: image → 16 patches", weight="bold"))
    body.append(_text(x0 + 96, top + 215, "x: [N, 3, 16, 16]", size=12, fill=MUTED))
    body.append(_text(x0 + 96, top + 233, "AR or MAR over the patches", size=12, fill=MUTED))

    body.append(_arrow(x0 + 205, top + 96, x0 + 255, top + 96))
    body.append(_text(x0 + 230, top + 84, "c_j", size=12, fill=ACCENT))

    # Panel 2: the highlighted patch, enlarged: 4x4 pixels.
    cell2, x1 = 44, 300
    for r in range(4):
        for c in range(4):
            rgb = _pixel(pr * 4 + r, pc * 4 + c)
            body.append(
                _rect(
                    x1 + c * cell2,
                    top + 8 + r * cell2,
                    cell2,
                    cell2,
                    _hex(rgb),
                    stroke="#fff",
                    width=2,
                )
            )
    qr, qc = 1, 1  # the highlighted pixel
    body.append(
        _rect(x1 + qc * cell2, top + 8 + qr * cell2, cell2, cell2, "none", stroke=ACCENT, width=3)
    )
    body.append(_text(x1 + 88, 40, "level 2: patch → 16 pixels", weight="bold"))
    body.append(_text(x1 + 88, top + 215, "child: [N·16, 3, 4, 4]", size=12, fill=MUTED))
    body.append(_text(x1 + 88, top + 233, "AR or MAR over the pixels", size=12, fill=MUTED))

    body.append(_arrow(x1 + 190, top + 96, x1 + 240, top + 96))
    body.append(_text(x1 + 215, top + 84, "c_jk", size=12, fill=ACCENT))

    # Panel 3: the leaf, R then G then B, each a 256-way categorical.
    x2 = 560
    rgb = _pixel(pr * 4 + qr, pc * 4 + qc)
    names = ("R", "G", "B")
    colours = ("#e03131", "#2f9e44", "#1971c2")
    for i, (name, value, colour) in enumerate(zip(names, rgb, colours, strict=True)):
        y = top + 20 + i * 56
        body.append(_text(x2 + 8, y + 19, name, size=15, weight="bold", fill=colour))
        body.append(_rect(x2 + 24, y, 160, 26, "#f1f3f5"))
        body.append(_rect(x2 + 24, y, 160 * value / 255, 26, colour))
        body.append(_text(x2 + 192, y + 18, str(value), size=12, anchor="start"))
        if i:
            body.append(_arrow(x2 - 6, y - 30, x2 - 6, y - 4))
    body.append(_text(x2 + 110, 40, "leaf: pixel → R, G, B", weight="bold"))
    body.append(_text(x2 + 110, top + 215, "child: [N·256, 3]", size=12, fill=MUTED))
    body.append(
        _text(x2 + 110, top + 233, "p(R | c) p(G | c, R) p(B | c, R, G)", size=12, fill=MUTED)
    )

    body.append(
        _text(
            420,
            350,
            "log p(x | y) = Σ over patches j, pixels k of log p_leaf(x_jk | c_jk)",
            size=15,
        )
    )
    body.append(
        _text(
            420,
            374,
            "each c is computed by the level above, from its own condition and the children decided before",
            size=12,
            fill=MUTED,
        )
    )
    return _svg(840, 392, body, "The recursion of a three-level fractal model")


# A fixed permutation of 16 children (a 'random' order, written out so the file never changes).
MAR_ORDER = (9, 2, 14, 5, 0, 11, 7, 12, 3, 15, 6, 1, 10, 13, 4, 8)


def _cosine_counts(unknown: int, steps: int) -> list[int]:
    """fractalkit.sampling.schedules.decode_counts for one instance, re-derived in plain Python."""
    remaining, counts = unknown, []
    for step in range(steps):
        target = math.floor(unknown * math.cos(math.pi / 2 * (step + 1) / steps))
        if step == steps - 1:
            target = 0
        target = min(target, max(remaining - 1, 0))
        counts.append(remaining - target)
        remaining = target
    return counts


def orders() -> str:
    """AR: raster order, one child per step. MAR: a random order, several per step (cosine)."""
    body: list[str] = []
    cell, top = 40, 60
    shades = ("#fff4e6", "#ffd8a8", "#ffa94d", "#f76707")
    # AR panel.
    x0 = 30
    body.append(_text(x0 + 80, 36, "AR level: raster order", weight="bold"))
    for j in range(16):
        r, c = divmod(j, 4)
        body.append(
            _rect(x0 + c * cell, top + r * cell, cell, cell, "#e7f5ff", stroke="#fff", width=2)
        )
        body.append(_text(x0 + c * cell + 20, top + r * cell + 25, str(j + 1), size=13))
    body.append(_text(x0 + 80, top + 185, "16 steps, one child each;", size=12, fill=MUTED))
    body.append(_text(x0 + 80, top + 201, "causal attention, KV cache", size=12, fill=MUTED))
    # MAR panel.
    x1 = 300
    counts = _cosine_counts(16, 4)
    step_of = {}
    pos = 0
    for s, n in enumerate(counts):
        for child in MAR_ORDER[pos : pos + n]:
            step_of[child] = s
        pos += n
    rank = {child: i for i, child in enumerate(MAR_ORDER)}
    body.append(_text(x1 + 80, 36, "MAR level: random order, 4 steps", weight="bold"))
    for j in range(16):
        r, c = divmod(j, 4)
        fill = shades[step_of[j]]
        body.append(_rect(x1 + c * cell, top + r * cell, cell, cell, fill, stroke="#fff", width=2))
        body.append(_text(x1 + c * cell + 20, top + r * cell + 25, str(rank[j] + 1), size=13))
    body.append(
        _text(
            x1 + 80, top + 185, f"children per step {tuple(counts)} (cosine);", size=12, fill=MUTED
        )
    )
    body.append(
        _text(x1 + 80, top + 201, "bidirectional attention, mask token", size=12, fill=MUTED)
    )
    # Legend.
    lx = 500
    for s, shade in enumerate(shades):
        body.append(_rect(lx + 30, top + 20 + s * 30, 22, 22, shade))
        body.append(_text(lx + 60, top + 36 + s * 30, f"step {s + 1}", size=12, anchor="start"))
    body.append(_text(lx + 30, top + 155, "numbers: position", size=12, anchor="start", fill=MUTED))
    body.append(_text(lx + 30, top + 171, "in the order", size=12, anchor="start", fill=MUTED))
    return _svg(660, 290, body, "Decoding orders of AR and MAR levels")


DIAGRAMS = {"recursion.svg": recursion, "orders.svg": orders}


def render() -> dict[str, str]:
    """File name -> SVG text of every diagram."""
    return {name: make() for name, make in DIAGRAMS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder (docs/assets)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
