"""Peak memory of converting and caching a released checkpoint, and of loading the cached folder.

``Fractal.from_pretrained(<released name>)`` reads the original ``.pth``, converts it, writes the
cached folder and loads it; the next call loads the folder only. This script measures both peaks
as a multiple of the original file's size, on a FractalMAR-64-shaped checkpoint (the published
widths and heads, fewer top-level blocks so the file is a few hundred MB; random weights),
written in the original's format (a pickled dict with ``"model"`` and an ``argparse.Namespace``).

Each stage runs in a fresh subprocess. The figure is the peak RSS of the call (``VmHWM``, the
high-water mark ``ru_maxrss`` reports, read from ``/proc/self/status`` after ``clear_refs`` reset
it to the current RSS, so the imports' own peak is not counted) minus the RSS just before the
call, in the file's units (bytes) and as a multiple of the file's size. ``ru_maxrss`` itself is
recorded beside it but is no baseline: a child's starts at its parent's peak (Linux carries it
over ``fork``/``exec``). The conversion reads the file from the cache folder with
``offline=True`` (no network). Linux only.

The subprocesses import ``fractalkit`` from the current folder first: to measure another
checkout (e.g. main, for "before"), run from its root with ``PYTHONPATH`` set to it.

Run: ``PYTHONPATH=. python benchmarks/conversion_memory.py [--top-depth 6] [--label after]``;
writes ``benchmarks/results/conversion_memory.json`` (a ``--label`` entry is added beside the
others, with the machine it ran on from ``benchmarks/machine.py``, load average included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fractalkit import cli
from fractalkit.cli import positive_int

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "conversion_memory.json"
NAME = "fractalmar-in64-scaled"
HEADS = (16, 8, 4)


def scaled_model(top_depth: int):
    """The FractalMAR-64 record with ``top_depth`` top-level blocks (published: 32)."""
    from fractalkit.imagenet.models import PAPER_MODELS

    paper = PAPER_MODELS["fractalmar-in64"]
    return dataclasses.replace(paper, name=NAME, depths=(top_depth, *paper.depths[1:]))


def write_original_checkpoint(path: Path, top_depth: int, seed: int = 0) -> int:
    """Write a FractalMAR-64-shaped checkpoint in the original's format at ``path``.

    The tensors get the original's names (:func:`fractalkit.imagenet.convert.name_table`) and
    random values (no model is initialised: shapes come from a meta-device build).

    Returns:
        The file's size in bytes.
    """
    import torch

    from fractalkit import Fractal
    from fractalkit.imagenet import convert

    with torch.device("meta"):
        skeleton = Fractal.from_config(scaled_model(top_depth).config())
    shapes = {k: v.shape for k, v in skeleton.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for orig, (name, row) in convert.name_table(skeleton).items():
        shape = shapes[name] if row is None else (1, *shapes[name][1:])
        state[orig] = torch.randn(shape, generator=gen) * 0.02
    args = argparse.Namespace(model="fractalmar_in64", img_size=64, epochs=1)
    torch.save({"model": state, "args": args, "epoch": 0}, path)
    return path.stat().st_size


_MEASURE = r"""
import json, os, resource, sys, time
import torch
import fractalkit
from fractalkit import Fractal, hub
from fractalkit.imagenet.releases import fractalgen_release

def status(field):  # bytes, from /proc/self/status (Linux)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

def reset_peak():  # VmHWM := VmRSS (Linux >= 4.0); the import's own peak is not counted
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

stage, cache, name, heads = sys.argv[1], sys.argv[2], sys.argv[3], tuple(json.loads(sys.argv[4]))
# the release declares the original file's true size in bytes (checked before conversion);
# the load stage reads the cached folder by path, where the original is gone
original = f"{cache}/fractalgen/{name}/checkpoint-last.pth"
size = os.path.getsize(original) if os.path.exists(original) else 1
hub.register_release(fractalgen_release(name, "http://127.0.0.1:9/unreachable.pth", size, heads=heads))
reset_peak()
base = status("VmRSS")
start = time.perf_counter()
if stage == "convert":
    model = Fractal.from_pretrained(name, cache_dir=cache, offline=True, progress=False)
else:
    model = Fractal.from_pretrained(f"{cache}/fractalgen/{name}")
seconds = time.perf_counter() - start
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"baseline_bytes": base, "peak_bytes": status("VmHWM"), "seconds": seconds,
                  "params": params,
                  "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(stage: str, cache: Path) -> dict:
    """Run one stage (``convert`` or ``load``) in a fresh interpreter; its figures."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, stage, str(cache), NAME, json.dumps(HEADS)],
        check=True, capture_output=True, text=True, env=None,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(top_depth: int, folder: Path) -> dict:
    """Write the fixture into a cache under ``folder``, convert it, load it; the figures."""
    original = folder / "cache" / "fractalgen" / NAME / "checkpoint-last.pth"
    original.parent.mkdir(parents=True)
    size = write_original_checkpoint(original, top_depth)
    out = {"file": "checkpoint-last.pth", "file_bytes": size, "top_depth": top_depth}
    for stage in ("convert", "load"):
        m = measure(stage, folder / "cache")
        extra = m["peak_bytes"] - m["baseline_bytes"]
        out[stage] = {**m, "peak_above_baseline_bytes": extra,
                      "peak_above_baseline_x_file": round(extra / size, 3)}
    out["cached_weights_bytes"] = (folder / "cache" / "fractalgen" / NAME / "model.safetensors").stat().st_size
    return out


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-depth", type=positive_int, default=6, help="top-level blocks (published: 32)")
    parser.add_argument("--label", default="after", help="the entry to write (e.g. before, after)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.top_depth, Path(tmp))
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(json.dumps(result, indent=2))
    if not args.no_write:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from machine import describe

        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data["command"] = "PYTHONPATH=. python benchmarks/conversion_memory.py --label <label>"
        data[args.label] = {**result, "machine": describe("cpu")}
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
