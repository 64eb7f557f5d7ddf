"""Every file under ``tests/fixtures`` is pinned by its SHA-256 in ``tests/fixtures/SHA256SUMS``
(issue 21, class 3), so a changed, added or removed fixture fails loudly instead of silently
moving the numbers the tests compare against.

The file has ``sha256sum``'s format (``cd tests/fixtures && sha256sum -c SHA256SUMS`` checks it
too). After a deliberate change (a regenerated fixture, a new one), rewrite it with::

    python tests/test_fixture_hashes.py --update

and say in the commit why the fixture changed.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SUMS = FIXTURES / "SHA256SUMS"
UPDATE = "python tests/test_fixture_hashes.py --update"


def fixture_files() -> list[str]:
    """The fixture files, relative to ``tests/fixtures`` with ``/``, sorted (caches left out)."""
    out = []
    for p in FIXTURES.rglob("*"):
        rel = p.relative_to(FIXTURES)
        if not p.is_file() or p == SUMS or "__pycache__" in rel.parts or p.suffix in (".pyc", ".pyo"):
            continue
        out.append(rel.as_posix())
    return sorted(out)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sums(text: str) -> dict[str, str]:
    """``{relative path: hex digest}`` of a ``sha256sum`` listing (``<hex>  <path>`` lines)."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        assert sep and len(digest) == 64, f"{SUMS}:{number}: not a sha256sum line: {line!r}"
        name = name.removeprefix("*")  # sha256sum's binary-mode marker
        assert name not in out, f"{SUMS}:{number}: {name} is listed twice"
        out[name] = digest
    return out


def render_sums() -> str:
    return "".join(f"{sha256(FIXTURES / name)}  {name}\n" for name in fixture_files())


def test_every_fixture_file_matches_its_pinned_sha256() -> None:
    assert SUMS.is_file(), f"{SUMS} is missing; create it with {UPDATE}"
    pinned = read_sums(SUMS.read_text())
    present = fixture_files()
    unpinned = sorted(set(present) - set(pinned))
    missing = sorted(set(pinned) - set(present))
    changed = sorted(name for name in set(present) & set(pinned) if sha256(FIXTURES / name) != pinned[name])
    problems = [f"{label}: {names}" for label, names in (
        ("changed since pinned", changed), ("not pinned (new?)", unpinned), ("pinned but missing", missing),
    ) if names]
    assert not problems, (
        "tests/fixtures differs from tests/fixtures/SHA256SUMS: " + "; ".join(problems)
        + f". If the change is deliberate, run {UPDATE} and commit both"
    )


def test_the_listing_is_in_sha256sum_format_and_sorted() -> None:
    names = list(read_sums(SUMS.read_text()))
    assert names == sorted(names) and all(not n.startswith("/") and ".." not in n.split("/") for n in names)


def test_a_changed_fixture_is_reported_by_name(tmp_path, monkeypatch) -> None:
    """The check itself: a copy of the fixtures with one byte changed, one file added and one
    removed is reported for all three, by name."""
    import shutil

    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "FIXTURES", copy)
    monkeypatch.setattr(module, "SUMS", copy / "SHA256SUMS")
    test_every_fixture_file_matches_its_pinned_sha256()  # an exact copy passes
    victim, gone = fixture_files()[0], fixture_files()[-1]
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    (copy / "extra.json").write_text("{}")
    (copy / gone).unlink()
    try:
        test_every_fixture_file_matches_its_pinned_sha256()
    except AssertionError as err:
        message = str(err)
    else:
        raise AssertionError("a changed fixture passed the check")
    assert victim in message and "extra.json" in message and gone in message and UPDATE in message


def main(argv: list[str] | None = None) -> None:
    """Rewrite SHA256SUMS from the fixture files as they are (after a deliberate change)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--update", action="store_true", required=True,
                        help="rewrite tests/fixtures/SHA256SUMS")
    parser.parse_args(argv)
    SUMS.write_text(render_sums())
    print(f"wrote {SUMS} ({len(fixture_files())} files)")


if __name__ == "__main__":
    main()
