"""fractalkit against the original FractalGen code: small 3-level MAR and AR training steps.

Issue 23's comparison, re-measurable: the small models of ``small_models.py`` (32x32 RGB images,
32 -> 4x4 patches -> pixels -> RGB leaf, widths 256 / 128 / 64, blocks 4 / 2 / 1, heads 8 / 4 / 4,
5 condition tokens for MAR, 1 for AR, 10 classes, no dropout, no label drop, mask ratio fixed at
0.8: ``ceil(0.8 k)`` of k children masked) built in both codes with the same sizes, the same
batch of images and labels, and the same optimizer (AdamW, lr 1e-4, fused). Each round runs one
training step (forward, backward, AdamW) of each of the four models in turn in this one process,
so every ratio is taken within a round (a shared machine drifts): fractalkit / original for MAR
and for AR, and MAR / AR within each code.

The original (https://github.com/LTH14/fractalgen, commit c7d0990) is not part of fractalkit and
is never downloaded: ``--original PATH`` names a checkout the user provides::

    git clone https://github.com/LTH14/fractalgen /path/to/fractalgen
    git -C /path/to/fractalgen checkout c7d0990

It runs unmodified. The script only (a) puts stand-ins in ``sys.modules`` for the two imports the
models need that do not matter here, ``util.visualize`` (notebook display, which would import
torchvision) and ``timm.models.vision_transformer`` (``DropPath`` and ``Mlp``, written to timm's
definitions), so neither timm nor torchvision need be installed; and (b) makes ``Tensor.cuda()``
return the tensor itself while the original's code runs (it calls ``.cuda()`` unconditionally).
For the timed runs it then sets every ``nn.Dropout`` of the original to p = 0 (its AR blocks
hard-wire 0.1) and replaces each MAR level's ``mask_ratio_generator`` with the fixed ratio;
fractalkit's ``training_mask_counts`` is patched to the same counts, as in ``small_models.py``.

Before timing, the checkout is checked to be the official math: the two tiny fixture models of
``tests/fixtures/fractalgen`` (produced by the official code at c7d0990) load into it and must
reproduce their recorded teacher-forced forward (loss, leaf logits and the conditions handed
down, conditional and unconditional) within 1e-5; the largest differences are reported.

``--preset fractalmar-in64 fractalar-in64`` adds the paper models (kwargs for the original read
from ``fractalkit.imagenet.models.PAPER_MODELS``; 1000 classes, red weight 5, no label drop, no
dropout, mask ratio fixed): training steps at ``--preset-batch`` (default 1) in fp32 and with the
forward under bf16 autocast (``--preset-steps`` of each, default 1, after a warm-up step of
each), one code after the other (about 8 GiB each; two do not fit a small machine together), so
these ratios are of medians, not per round. The original's
``torch.cuda.amp.autocast(enabled=False)`` regions do not leave CPU autocast, so on a CPU its
attention logits run in bf16 too; bf16 figures count only on a CPU with ``avx512_bf16``.
``--skip-small`` runs only those rows.

``--keep-host-memory`` calls ``fractalkit.hostmem.keep_freed_host_memory()`` first (glibc keeps
freed memory for reuse); it is process-wide, so it applies to both codes. Without it the C
library's defaults stay (``small_models.py`` and ``throughput.py`` keep the memory by default).

Run: ``PYTHONPATH=. python benchmarks/against_original.py --original /path/to/fractalgen
--threads 2 --steps 5 [--preset fractalmar-in64 fractalar-in64]`` (writes
benchmarks/results/against_original[_TAG].json: the machine's CPU flags and load average, the
original's path, git commit or "unknown" and file hashes, every step's seconds and the ratios).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags
from small_models import MASK_RATIO, Trainer, fixed_mask_counts

from fractalkit import Fractal, cli
from fractalkit.hostmem import keep_freed_host_memory
from fractalkit.imagenet.models import IMAGENET_CLASSES, PAPER_MODELS, RED_WEIGHT, PaperModel

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fractalgen"
OFFICIAL_COMMIT = "c7d0990"
ORIGINAL_FILES = ("models/fractalgen.py", "models/mar.py", "models/ar.py", "models/pixelloss.py")
HOW_TO_GET = (f"git clone https://github.com/LTH14/fractalgen PATH && git -C PATH checkout {OFFICIAL_COMMIT}, "
              "then pass --original PATH")
#: the original's input normalisation (torchvision ToTensor + Normalize with ImageNet statistics)
PIX_MEAN = (0.485, 0.456, 0.406)
PIX_STD = (0.229, 0.224, 0.225)
#: the largest difference from the recorded official forward that still counts as the same code
TOLERANCE = 1e-5
#: paper models ``--preset`` offers (both codes at batch 1; the 256x256 ones need far more memory)
PRESET_CHOICES = ("fractalmar-in64", "fractalar-in64")
#: run order within a round: (code, kind)
MODELS = (("fractalkit", "mar"), ("original", "mar"), ("fractalkit", "ar"), ("original", "ar"))


# ---- the original's code, imported unmodified -------------------------------------------------


def _drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False,
               scale_by_keep: bool = True) -> torch.Tensor:
    """timm's ``drop_path``: zero whole samples of ``x`` [B, ...] with probability ``drop_prob``."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm's ``DropPath`` (stochastic depth per sample); the original builds it only for rates > 0."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, ...] with whole samples dropped (training only)."""
        return _drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


class Mlp(nn.Module):
    """timm's ``Mlp`` (linear layers): fc1, activation, dropout, identity norm, fc2, dropout.

    Maps [..., in_features] to [..., out_features]; the submodules and their order are timm's, so
    state-dict names (``fc1.*``, ``fc2.*``) and the initialisation order match.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, norm_layer=None, bias: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = bias if isinstance(bias, tuple) else (bias, bias)
        drop = drop if isinstance(drop, tuple) else (drop, drop)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias[0])
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop[0])
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias[1])
        self.drop2 = nn.Dropout(drop[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_features] -> [..., out_features]."""
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


def _visualize_patch(*args, **kwargs):
    raise RuntimeError("util.visualize is a stand-in here: the benchmark never visualises")


def _install_stand_ins() -> None:
    """Put ``util.visualize`` and ``timm.models.vision_transformer`` stand-ins in ``sys.modules``."""
    modules = {
        "util": types.ModuleType("util"),
        "util.visualize": types.ModuleType("util.visualize"),
        "timm": types.ModuleType("timm"),
        "timm.models": types.ModuleType("timm.models"),
        "timm.models.vision_transformer": types.ModuleType("timm.models.vision_transformer"),
    }
    for name in ("util", "timm", "timm.models"):
        modules[name].__path__ = []  # packages
    modules["util"].visualize = modules["util.visualize"]
    modules["util.visualize"].visualize_patch = _visualize_patch
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].vision_transformer = modules["timm.models.vision_transformer"]
    modules["timm.models.vision_transformer"].DropPath = DropPath
    modules["timm.models.vision_transformer"].Mlp = Mlp
    sys.modules.update(modules)


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """While the original's code runs: ``Tensor.cuda()`` returns the tensor itself (it is on the CPU)."""
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
        yield


def load_original(path: Path) -> types.ModuleType:
    """Import ``models.fractalgen`` from the checkout at ``path``, unmodified.

    Raises:
        cli.MissingInputError: no such folder, or it lacks one of :data:`ORIGINAL_FILES`.
        cli.UserError: the files do not import, or are not the original's (no ``FractalGen``).
    """
    if not path.is_dir():
        raise cli.MissingInputError(f"--original {path}: no such folder. This benchmark needs a checkout of "
                                    f"the original FractalGen code: {HOW_TO_GET}")
    missing = [name for name in ORIGINAL_FILES if not (path / name).is_file()]
    if missing:
        raise cli.MissingInputError(f"--original {path} is not a checkout of LTH14/fractalgen: "
                                    f"{', '.join(missing)} missing. {HOW_TO_GET}")
    loaded = sys.modules.get("models")
    if loaded is not None and str(path.resolve() / "models") not in list(getattr(loaded, "__path__", [])):
        raise cli.UserError(f"another module named 'models' is already imported ({loaded}); "
                            "run the benchmark in a fresh process")
    _install_stand_ins()
    # the original's `torch.cuda.amp.autocast(enabled=False)` is deprecated; say so once, not per call
    warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast", category=FutureWarning)
    sys.path.insert(0, str(path.resolve()))
    try:
        with cpu_only():
            import models.fractalgen as fg  # the original's package, from the checkout
    except Exception as err:  # any import failure means: not the code this benchmark expects
        raise cli.UserError(f"--original {path}: models/fractalgen.py does not import here "
                            f"({type(err).__name__}: {err}); expected LTH14/fractalgen at commit "
                            f"{OFFICIAL_COMMIT}") from err
    if Path(fg.__file__).resolve().parent.parent != path.resolve() or not hasattr(fg, "FractalGen"):
        raise cli.UserError(f"--original {path}: models/fractalgen.py has no FractalGen class; expected "
                            f"LTH14/fractalgen at commit {OFFICIAL_COMMIT}")
    return fg


def describe_original(path: Path) -> dict:
    """Where the original came from: its path, git commit (or "unknown") and its files' SHA-256."""
    commit = "unknown"
    if (path / ".git").exists():
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip() or "unknown"
    return {"path": str(path.resolve()), "git_commit": commit,
            "sha256": {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in ORIGINAL_FILES}}


# ---- is it the official math? -----------------------------------------------------------------


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> the original's float input: (v / 255 - mean) / std per channel."""
    mean = torch.tensor(PIX_MEAN).view(3, 1, 1)
    std = torch.tensor(PIX_STD).view(3, 1, 1)
    return images.float().div(255).sub(mean).div(std)


def _recorded_forward(model: nn.Module, io: dict, conditional: bool) -> dict:
    """One teacher-forced eval forward of the original, as the fixture harness ran it.

    MAR levels take the fixture's masks; the conditional forward uses ``class_emb[label]`` in
    place of ``fake_latent`` (the eval forward's constant drop mask of ones then selects it).
    Returns the loss, the leaf logits [N, 3, 256] and the conditions handed down [N_i, K, D_i].
    """
    levels = [model.generator, model.next_fractal.generator]
    leaf = model.next_fractal.next_fractal
    out: dict[str, torch.Tensor] = {}
    hooks = [
        model.next_fractal.register_forward_pre_hook(
            lambda m, args: out.__setitem__("cond_level0", torch.stack(args[1], dim=1))),
        leaf.register_forward_pre_hook(
            lambda m, args: out.__setitem__("cond_level1", torch.stack(args[1], dim=1))),
    ]
    predict = leaf.predict

    def recording_predict(target, cond_list):
        logits, target = predict(target, cond_list)
        out["leaf_logits"] = logits
        return logits, target

    fake_latent = model.fake_latent
    try:
        leaf.predict = recording_predict
        for i, gen in enumerate(levels):
            if f"mask_level{i}" in io:
                gen.random_masking_uniform = partial(lambda x, orders, m: m.float(), m=io[f"mask_level{i}"])
        if conditional:
            model.fake_latent = nn.Parameter(model.class_emb.weight[io["labels"]].detach().clone())
        torch.manual_seed(0)
        np.random.seed(0)
        with torch.no_grad(), cpu_only():
            out["loss"] = model(_normalise(io["images"]), io["labels"])
    finally:
        for h in hooks:
            h.remove()
        del leaf.predict
        for gen in levels:
            gen.__dict__.pop("random_masking_uniform", None)
        model.fake_latent = fake_latent
    return out


def check_original(fg: types.ModuleType, fixtures: Path = FIXTURES) -> dict:
    """Max abs differences of the original's forward from each tiny fixture's recorded one.

    Raises:
        cli.UserError: a difference above :data:`TOLERANCE` (not the official code), or a
            state dict that does not load into it.
    """
    from safetensors.torch import load_file

    report = {}
    for name in ("tiny_mar_16", "tiny_ar_16"):
        folder = fixtures / name
        kwargs = json.loads((folder / "config.json").read_text())["kwargs"]
        io = load_file(str(folder / "io.safetensors"))
        with cpu_only():
            model = fg.FractalGen(**kwargs).eval()
        try:
            model.load_state_dict(load_file(str(folder / "state_dict.safetensors")), strict=True)
        except RuntimeError as err:
            raise cli.UserError(f"the official state dict of {name} does not load into the original "
                                f"given ({err}); expected LTH14/fractalgen at commit {OFFICIAL_COMMIT}") from err
        diffs = {}
        for conditional in (False, True):
            got = _recorded_forward(model, io, conditional)
            suffix = "_cond" if conditional else ""
            for key, value in got.items():
                if key == "cond_level1" and conditional:
                    continue  # recorded for the unconditional forward only
                want = io[key + suffix]
                diffs[key + suffix] = (float("inf") if value.shape != want.shape
                                       else (value.float() - want).abs().max().item())
        worst = max(diffs, key=diffs.get)
        if not diffs[worst] <= TOLERANCE:
            raise cli.UserError(
                f"the original given does not reproduce the official forward of the fixture {name}: "
                f"{worst} differs by {diffs[worst]:.3g} (tolerance {TOLERANCE}); expected LTH14/fractalgen "
                f"at commit {OFFICIAL_COMMIT} ({HOW_TO_GET})")
        report[name] = {"max_abs_diff": diffs[worst], "per_tensor": diffs}
    return report


# ---- the timed models -------------------------------------------------------------------------


def original_kwargs(kind: str) -> dict:
    """``FractalGen`` arguments of the small model of :func:`small_models.small_config`."""
    return {
        "img_size_list": (32, 4, 1), "embed_dim_list": (256, 128, 64), "num_blocks_list": (4, 2, 1),
        "num_heads_list": (8, 4, 4),
        "generator_type_list": ("mar", "mar", "ar") if kind == "mar" else ("ar", "ar", "ar"),
        "num_conds": 5 if kind == "mar" else 1, "class_num": 10, "label_drop_prob": 0.0,
        "attn_dropout": 0.0, "proj_dropout": 0.0, "guiding_pixel": False, "r_weight": 1.0,
        "grad_checkpointing": False,
    }


def timed_step(forward, opt: torch.optim.Optimizer) -> tuple[float, float, float]:
    """One training step (``forward() -> loss``, backward, ``opt``) with the original's
    ``.cuda()`` calls made harmless: forward, backward and optimizer seconds."""
    with cpu_only():
        t0 = time.perf_counter()
        loss = forward()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2


class FixedRatio:
    """Stands in for the original's ``mask_ratio_generator`` (scipy truncnorm): always the ratio."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def rvs(self, size: int) -> np.ndarray:
        """``size`` copies of the ratio (float64, as ``truncnorm.rvs`` returns)."""
        return np.full(size, self.ratio)


def fixed_training(model: nn.Module) -> nn.Module:
    """The original ``model`` with no dropout (its AR blocks hard-wire 0.1) and the fixed mask ratio."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "mask_ratio_generator"):
            module.mask_ratio_generator = FixedRatio(MASK_RATIO)
    return model


class OriginalTrainer:
    """One small model of the original, its optimizer and the batch of :class:`small_models.Trainer`."""

    def __init__(self, fg: types.ModuleType, kind: str, batch: int) -> None:
        torch.manual_seed(0)
        np.random.seed(0)
        self.kind = kind
        with cpu_only():
            self.model = fixed_training(fg.FractalGen(**original_kwargs(kind)).train())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(0)  # the same images and labels as small_models.Trainer
        self.x = _normalise(torch.randint(0, 256, (batch, 3, 32, 32), generator=g))
        self.y = torch.randint(0, 10, (batch,), generator=g)

    def step(self) -> tuple[float, float, float]:
        """One training step: forward, backward and optimizer seconds."""
        return timed_step(lambda: self.model(self.x, self.y), self.opt)


def paper_kwargs(record: PaperModel) -> dict:
    """``FractalGen`` arguments of a paper model, read from its record in ``PAPER_MODELS``."""
    n = len(record.sizes) - 1
    return {
        "img_size_list": record.sizes, "embed_dim_list": record.widths, "num_blocks_list": record.depths,
        "num_heads_list": record.heads, "generator_type_list": (record.kind,) * n + ("ar",),
        "num_conds": 5 if record.kind == "mar" else 1, "class_num": IMAGENET_CLASSES, "label_drop_prob": 0.0,
        "attn_dropout": 0.0, "proj_dropout": 0.0, "guiding_pixel": record.guiding_pixel,
        "r_weight": RED_WEIGHT[0], "grad_checkpointing": False,
    }


class PresetTrainer:
    """A paper model in one code (``"fractalkit"`` or ``"original"``), AdamW and one batch.

    Both take the same uint8 images [batch, 3, S, S] and labels; the original gets them
    normalised as its data pipeline does. No label drop, no dropout, mask ratio fixed.
    """

    def __init__(self, code: str, fg: types.ModuleType, record: PaperModel, batch: int) -> None:
        torch.manual_seed(0)
        np.random.seed(0)
        self.code = code
        self.g = torch.Generator().manual_seed(0)
        size = record.image_size
        images = torch.randint(0, 256, (batch, 3, size, size), generator=self.g)
        self.y = torch.randint(0, IMAGENET_CLASSES, (batch,), generator=self.g)
        if code == "fractalkit":
            self.model = Fractal.from_config({**record.config(), "label_drop": 0.0}).train()
            self.x = images
        else:
            with cpu_only():
                self.model = fixed_training(fg.FractalGen(**paper_kwargs(record)).train())
            self.x = _normalise(images)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)

    def step(self, bf16: bool) -> tuple[float, float, float]:
        """One training step, the forward under bf16 autocast or not: forward, backward, optimizer seconds."""
        def forward() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if self.code == "fractalkit":
                    return self.model.loss(self.x, self.y, generator=self.g).total
                return self.model(self.x, self.y)

        return timed_step(forward, self.opt)


def measure_preset(fg: types.ModuleType, record: PaperModel, batch: int, steps: int) -> dict:
    """Training steps of a paper model in both codes, fp32 and bf16 autocast.

    One code at a time (two such models with AdamW state do not fit a small machine together):
    build, one warm-up step per precision, then ``steps`` rounds of an fp32 and a bf16 step.
    """
    runs: dict[str, dict] = {}
    for code in ("fractalkit", "original"):
        trainer = PresetTrainer(code, fg, record, batch)
        for bf16 in (False, True):
            trainer.step(bf16)  # warm-up
        times: dict[str, list] = {"fp32": [], "bf16": []}
        for _ in range(steps):
            for precision in times:
                times[precision].append(trainer.step(precision == "bf16"))
        runs[code] = {"parameters": sum(p.numel() for p in trainer.model.parameters())}
        for precision, ts in times.items():
            runs[code][precision] = {
                "step_s": [sum(x) for x in ts], "step_s_median": statistics.median(sum(x) for x in ts),
                "forward_s_median": statistics.median(x[0] for x in ts),
                "backward_s_median": statistics.median(x[1] for x in ts),
                "optimizer_s_median": statistics.median(x[2] for x in ts),
            }
        del trainer
        gc.collect()
    ratios = {p: runs["fractalkit"][p]["step_s_median"] / runs["original"][p]["step_s_median"]
              for p in ("fp32", "bf16")}
    return {"batch": batch, "steps": steps, "runs": runs, "fractalkit_over_original_step": ratios}


def _ratios(num: list, den: list) -> dict:
    """Per-round ratios of step, forward and backward seconds, their median, and the ratio of minima.

    The median of the per-round ratios is the figure to quote. ``of_minima`` (fastest step over
    fastest step) agrees with it on a quiet machine; on a shared one a quiet moment can fall on
    one model's step alone and make it meaningless, so it is kept only as a check.
    """
    out = {}
    for phase, pick in (("step", lambda t: t[0] + t[1] + t[2]), ("forward", lambda t: t[0]),
                        ("backward", lambda t: t[1])):
        per_round = [pick(a) / pick(b) for a, b in zip(num, den, strict=True)]
        out[phase] = {"per_round": per_round, "median": statistics.median(per_round),
                      "of_minima": min(map(pick, num)) / min(map(pick, den))}
    return out


def measure(fg: types.ModuleType, batch: int, steps: int) -> dict:
    """Steps of the four models in turn (one step each per round) after one warm-up step each."""
    trainers = {}
    for code, kind in MODELS:
        trainers[code, kind] = Trainer(kind, batch) if code == "fractalkit" else OriginalTrainer(fg, kind, batch)
    for t in trainers.values():
        t.step()  # warm-up
    times: dict[tuple[str, str], list] = {key: [] for key in trainers}
    for _ in range(steps):
        for key, t in trainers.items():
            times[key].append(t.step())
    runs = {}
    for (code, kind), ts in times.items():
        runs[f"{code}_{kind}"] = {
            "step_s": [sum(x) for x in ts],
            "step_s_median": statistics.median(sum(x) for x in ts),
            "step_s_min": min(sum(x) for x in ts),
            "forward_s_median": statistics.median(x[0] for x in ts),
            "backward_s_median": statistics.median(x[1] for x in ts),
            "optimizer_s_median": statistics.median(x[2] for x in ts),
            "parameters": sum(p.numel() for p in trainers[code, kind].model.parameters()),
        }
    return {
        "batch": batch, "steps_per_model": steps, "runs": runs,
        "fractalkit_over_original": {kind: _ratios(times["fractalkit", kind], times["original", kind])
                                     for kind in ("mar", "ar")},
        "mar_over_ar": {code: _ratios(times[code, "mar"], times[code, "ar"]) for code in ("fractalkit", "original")},
    }


def _fmt(ratio: dict) -> str:
    return (f"median {ratio['median']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratio['per_round'])}; "
            f"fastest over fastest {ratio['of_minima']:.3f})")


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, required=True,
                        help=f"a checkout of https://github.com/LTH14/fractalgen at commit {OFFICIAL_COMMIT} "
                             "(git clone ... && git checkout c7d0990); never downloaded by this script")
    parser.add_argument("--threads", type=cli.positive_int, default=2, help="torch threads (default 2)")
    parser.add_argument("--steps", type=cli.positive_int, default=5, help="timed rounds: steps per model (default 5)")
    parser.add_argument("--batch", type=cli.positive_int, default=32, help="images per step (default 32)")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--preset", nargs="+", default=[], choices=PRESET_CHOICES,
                        help="also the paper models' training step in both codes at --preset-batch, fp32 and bf16 "
                             "autocast (about 8 GiB of memory per code; minutes per step on a small CPU)")
    parser.add_argument("--preset-batch", type=cli.positive_int, default=1,
                        help="images per paper-model step (default 1)")
    parser.add_argument("--preset-steps", type=cli.positive_int, default=1,
                        help="timed fp32 and bf16 steps per paper model and code, after one warm-up each "
                             "(default 1)")
    parser.add_argument("--skip-small", action="store_true", help="only the --preset rows, not the small models")
    parser.add_argument("--keep-host-memory", action="store_true",
                        help="call fractalkit.hostmem.keep_freed_host_memory() first (process-wide: both codes)")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.tag and not all(c.isalnum() or c in "-_." for c in args.tag):
        parser.error(f"--tag {args.tag!r}: use letters, digits, '-', '_' or '.' (it names a file)")
    if args.skip_small and not args.preset:
        parser.error("--skip-small leaves nothing to measure: give --preset too")

    kept = keep_freed_host_memory() if args.keep_host_memory else False
    torch.set_num_threads(args.threads)
    load_at_start = list(os.getloadavg())

    fg = load_original(args.original)
    check = check_original(fg)
    for name, rep in check.items():
        print(f"original vs the official forward of {name}: max abs diff {rep['max_abs_diff']:.3g}")
    result: dict = {}
    with mock.patch("fractalkit.levels.mar.training_mask_counts", fixed_mask_counts):
        if not args.skip_small:
            result = measure(fg, args.batch, args.steps)
        presets = {name: measure_preset(fg, PAPER_MODELS[name], args.preset_batch, args.preset_steps)
                   for name in args.preset}
    if presets:
        result["presets"] = presets

    for key, run in result.get("runs", {}).items():
        print(f"{key:16s} step {run['step_s_median']:.3f} s (min {run['step_s_min']:.3f}; forward "
              f"{run['forward_s_median']:.3f}, backward {run['backward_s_median']:.3f}, optimizer "
              f"{run['optimizer_s_median']:.3f}), {run['parameters']:,} parameters")
    for kind, ratios in result.get("fractalkit_over_original", {}).items():
        print(f"fractalkit / original, {kind.upper()}: step {_fmt(ratios['step'])}; forward "
              f"{ratios['forward']['median']:.3f}, backward {ratios['backward']['median']:.3f}")
    for code, ratios in result.get("mar_over_ar", {}).items():
        print(f"MAR / AR, {code}: step {_fmt(ratios['step'])}; forward {ratios['forward']['median']:.3f}, "
              f"backward {ratios['backward']['median']:.3f}")
    for name, rows in presets.items():
        for precision in ("fp32", "bf16"):
            fk, og = (rows["runs"][code][precision] for code in ("fractalkit", "original"))
            print(f"{name} training step, batch {rows['batch']}, {precision}: fractalkit {fk['step_s_median']:.2f} s, "
                  f"original {og['step_s_median']:.2f} s, fractalkit / original "
                  f"{rows['fractalkit_over_original_step'][precision]:.3f}")
    if presets and not cpu_flags().get("avx512_bf16"):
        print("note: this CPU has no avx512_bf16: bf16 is emulated here and its figures do not count")
    machine = {"cpu_flags": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
               "load_average_at_start": load_at_start, "load_average": list(os.getloadavg()),
               "cpus": os.cpu_count(),
               "keep_freed_host_memory": kept}
    settings = {"mask_ratio": MASK_RATIO, "masked_children": {k: math.ceil(MASK_RATIO * k) for k in (64, 16)},
                "batch": args.batch, "preset_batch": args.preset_batch,
                "preset_steps": args.preset_steps, "dropout": 0.0, "label_drop": 0.0,
                "optimizer": "AdamW(lr=1e-4, fused=True)",
                "original_kwargs": {kind: original_kwargs(kind) for kind in ("mar", "ar")},
                "original_preset_kwargs": {name: paper_kwargs(PAPER_MODELS[name]) for name in args.preset}}
    original = {**describe_original(args.original), "fixture_check": check}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"against_original{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": machine, "original": original, "settings": settings, **result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
