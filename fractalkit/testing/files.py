"""Configuration and file checks: ``Fractal.from_config`` of the JSON config and ``save`` +
``Fractal.load`` rebuild the same model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.testing.conditions import batch_condition, conditional, random_conditions
from fractalkit.testing.report import CheckResult, ContractError, fail
from fractalkit.testing.support import check_model, random_data

__all__ = ["check_config_round_trip", "check_save_load"]


def _structure(model: Fractal) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_config_round_trip(model: Fractal) -> CheckResult:
    """``Fractal.from_config(json round trip of model.config.to_dict())`` rebuilds the same structure:
    the same config and the same parameter and buffer names and shapes.

    Returns:
        :class:`CheckResult` (figure: number of tensors compared).

    Raises:
        ContractError: the config is not JSON, does not round-trip, or rebuilds another model.
    """
    check_model(model, "check_config_round_trip")
    config = model.config
    try:
        text = json.dumps(config.to_dict())
    except TypeError as err:
        raise ContractError(
            f"check_config_round_trip failed: model.config is not JSON-serialisable ({err}). "
            "Likely cause: a config field holds a tensor or object; store plain numbers, "
            "strings, lists and nested configs"
        ) from err
    try:
        rebuilt = Fractal.from_config(json.loads(text))
    except ValueError as err:
        raise ContractError(
            f"check_config_round_trip failed: Fractal.from_config refused the model's own config: "
            f"{err}. Likely cause: a component's class is not registered (@fractalkit.config.register('kind')) "
            "or its to_dict()/config() does not give its constructor arguments"
        ) from err
    if rebuilt.config != config or rebuilt.config.to_dict() != config.to_dict():
        raise ContractError(
            "check_config_round_trip failed: the rebuilt model's config differs from the original "
            f"one:\n{rebuilt.config}\nvs\n{config}"
        )
    a, b = _structure(model), _structure(rebuilt.to(next(iter(model.state_dict().values())).dtype))
    if {k: v[0] for k, v in a.items()} != {k: v[0] for k, v in b.items()}:
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ContractError(
            "check_config_round_trip failed: the rebuilt model has other tensors: missing "
            f"{missing[:5]}, extra {extra[:5]}, or other shapes. Likely cause: build() reads "
            "something that is not in the config"
        )
    return CheckResult("check_config_round_trip", float(len(a)), 0.0)


def check_save_load(
    model: Fractal,
    x: Tensor | None = None,
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
    directory: str | Path | None = None,
    num_instances: int = 4,
    seed: int = 0,
) -> CheckResult:
    """``save`` then ``Fractal.load`` gives the same tensors, the same ``log_prob`` (bitwise,
    identity orders) and the same samples from the same seed; on a model with a null condition
    also the same ``log_prob`` under the null condition and the same guided samples (guidance
    3, linear schedule), which read tensors no other comparison does.

    Args:
        model: any :class:`fractalkit.Fractal` whose components are registered.
        x: data (default: random, from ``seed``).
        c: the condition for the N instances (default: random example conditions for a
            conditional model; ``conditions`` as in :func:`~fractalkit.testing.check_normalisation`).
        y: int64 ``[N]`` labels, the class-label spelling of ``c``.
        directory: where to write the file (default: a temporary directory, removed after).

    Returns:
        :class:`CheckResult` with the largest ``|log_prob before - after|``.

    Raises:
        ContractError: loading fails (a file that cannot be rebuilt by kind, or a constructor
            that reads tensor values, which fails on the meta device ``Fractal.load`` builds
            on first) or the loaded model differs.
    """
    check_model(model, "check_save_load")
    c = batch_condition(c, y, "check_save_load")
    if x is None:
        x = random_data(model, num_instances, seed=seed)
        if c is None:
            c = random_conditions(model, num_instances, seed=seed + 1, conditions=conditions)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(directory or tmp) / "model.safetensors"
        model.save(path)
        try:
            loaded = Fractal.load(path).eval()
        except ValueError as err:
            raise ContractError(
                f"check_save_load failed: Fractal.load could not read the saved file: {err}. "
                "Likely cause: a component's config or partitioner is not registered, so the "
                "file cannot be rebuilt by kind (@fractalkit.register(\"kind\"))"
            ) from err
        except (NotImplementedError, RuntimeError) as err:
            if "meta" not in str(err):
                raise
            raise ContractError(
                f"check_save_load failed: Fractal.load could not build the model: {err}. "
                "Likely cause: Fractal.load first builds the model on the meta device (shapes "
                "only, no values) to check the file before reading it, and a component's "
                "constructor reads the values of a tensor it made (.tolist(), .item(), "
                "float(t), .cpu(), a Python 'if' on a tensor). Compute such constants with "
                "plain Python (lists, math) and only then make tensors of them, registered as "
                "buffers if the model needs them (see the tutorial 'Write your own level', "
                "rules for a component's constructor)"
            ) from err
    before, after = model.state_dict(), loaded.state_dict()
    if before.keys() != after.keys() or any(
        not torch.equal(before[k].cpu(), after[k].cpu()) or before[k].dtype != after[k].dtype
        for k in before
    ):
        raise ContractError(
            "check_save_load failed: the loaded model's tensors differ from the saved ones "
            f"(keys only before: {sorted(set(before) - set(after))[:5]}, only after: "
            f"{sorted(set(after) - set(before))[:5]})"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = model.log_prob(x, c, orders="identity").value
            b = loaded.log_prob(x, c, orders="identity").value
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        if not diff == 0:
            raise fail("check_save_load", "largest |log_prob before - after save/load|", diff, "0",
                        "the loaded model is built differently (a config field not saved)")
        n = x.shape[0]
        has_null = conditional(model) and model.conditioner.has_null and c is not None
        if has_null:  # the null condition: what guidance's unconditional half reads
            with torch.no_grad():
                a = model.log_prob(x, None, orders="identity").value
                b = loaded.log_prob(x, None, orders="identity").value
            null_diff = float((a - b).abs().max()) if a.numel() else 0.0
            diff = max(diff, null_diff)
            if not null_diff == 0:
                raise fail(
                    "check_save_load", "largest |log_prob before - after save/load| under the "
                    "null condition (c=None)", null_diff, "0", _NOT_SAVED,
                )
        s1 = model.sample(n, c, generator=torch.Generator().manual_seed(seed))
        s2 = loaded.sample(n, c, generator=torch.Generator().manual_seed(seed))
        draws = [("", s1, s2)]
        if has_null:
            guided = {"guidance": 3.0, "guidance_schedule": "linear"}
            g1 = model.sample(n, c, generator=torch.Generator().manual_seed(seed), **guided)
            g2 = loaded.sample(n, c, generator=torch.Generator().manual_seed(seed), **guided)
            draws.append((" with guidance 3 (linear schedule)", g1, g2))
    finally:
        model.train(was_training)
    for how, d1, d2 in draws:
        if not torch.equal(d1, d2):
            raise fail(
                "check_save_load", f"fraction of sampled elements that differ after save/load{how}",
                float((d1 != d2).double().mean()), "0",
                "a sampling-relevant setting is not part of the saved config" if not how else _NOT_SAVED,
            )
    return CheckResult("check_save_load", diff, 0.0)


_NOT_SAVED = (
    "the null condition (or another tensor guidance reads) is not saved: a null embedding kept "
    "in a non-persistent buffer, or made from random numbers in a constructor, comes back "
    "different after loading; make it an nn.Parameter or a persistent buffer"
)
