"""Issue 22 (smaller): a truncated checkpoint is named as truncated, in whole sentences.

Before the change a FractalGen checkpoint cut short (an interrupted download) was reported as
"not a PyTorch checkpoint (OSError: [Errno 22] Invalid argument)", or with torch's message cut
at 200 characters in mid-sentence ("... a high likelihood that your checkpoint file is)").
Now the zip archive's missing directory is found before torch reads the file, a cut legacy file
says "truncated or corrupt", and torch's text is kept in whole sentences without terminal codes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from fractalkit.imagenet.convert import FractalGenFormatError, _reason, load_state_dict

ROOT = Path(__file__).resolve().parents[1]


def checkpoint(path: Path, zip_format: bool) -> bytes:
    """A small FractalGen-shaped checkpoint (weights and the Namespace the original stores)."""
    torch.save({"model": {"w": torch.arange(5000, dtype=torch.float32)}, "args": argparse.Namespace(seed=0)},
               path, _use_new_zipfile_serialization=zip_format)
    return path.read_bytes()


CUTS = {
    # name: (zip format, how many bytes are kept)
    "zip, only its first 300 bytes": (True, lambda n: 300),
    "zip, half": (True, lambda n: n // 2),
    "zip, all but its last 10 bytes": (True, lambda n: n - 10),
    "legacy, half": (False, lambda n: n // 2),
    "legacy, all but its last 10 bytes": (False, lambda n: n - 10),
}


@pytest.mark.parametrize("case", sorted(CUTS))
def test_a_truncated_checkpoint_says_so_in_whole_sentences(tmp_path: Path, case: str) -> None:
    zip_format, keep = CUTS[case]
    full = checkpoint(tmp_path / "full.pth", zip_format)
    assert set(load_state_dict(tmp_path / "full.pth")) == {"w"}  # the whole file loads
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full[: keep(len(full))])
    with pytest.raises(FractalGenFormatError) as info:
        load_state_dict(cut)
    message = str(info.value)
    assert str(cut) in message and "truncated or corrupt" in message
    assert message.endswith("download or copy it again"), message
    assert "\x1b" not in message and message.count("(") == message.count(")"), message
    assert not re.search(r"\b(is|the|a|your)\)", message), message  # nothing cut mid-sentence


TORCH_TEXTS = {
    # name: (torch's error text, what the reason must hold, what it must not)
    "miniz advice, longer than the limit": (
        "PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
        "internal miniz error. If you are seeing this error, there is a high likelihood that your "
        "checkpoint file is corrupted. This can happen if the checkpoint was not saved properly, was "
        "transferred incorrectly, or the file was modified after saving.",
        "failed finding central directory.", "file is ..."),
    "weights-only refusal: the refused global, no colours": (
        "Weights only load failed. This file can still be loaded, to do so you have two options, "
        "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) ...\n"
        "\tWeightsUnpickler error: Unsupported global: GLOBAL collections.Counter was not an allowed "
        "global by default.\n\nCheck the documentation of torch.load to learn more.",
        "WeightsUnpickler error: Unsupported global: GLOBAL collections.Counter", "\x1b"),
    "one sentence longer than the limit: kept whole": ("x" * 400 + " end.", "x" * 400 + " end.", "..."),
    "empty": ("", "RuntimeError", "()"),
}


@pytest.mark.parametrize("case", sorted(TORCH_TEXTS))
def test_torch_errors_are_shortened_at_sentence_ends(case: str) -> None:
    text, holds, lacks = TORCH_TEXTS[case]
    reason = _reason(RuntimeError(text))
    assert holds in reason and lacks not in reason, reason
    assert reason.endswith((".", "...")) or reason == "RuntimeError", reason


def test_no_message_is_built_from_a_sliced_error_text() -> None:
    """The cut that made the mid-sentence message, searched for everywhere a message is built."""
    pattern = re.compile(r"str\((err|e|exc|error)\)[^\n]*\[:\d+\]|splitlines\(\)\[0\]\[:\d+\]")
    found = [f"{path.relative_to(ROOT)}:{n}" for folder in ("fractalkit", "examples", "benchmarks")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
