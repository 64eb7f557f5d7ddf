"""Weight-decay parameter groups from what the modules declare, not from parameter-name substrings.

A parameter gets no weight decay when

1. it belongs to a normalisation layer (``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``,
   batch/instance norms, :class:`fractalkit.nn.RMSNorm`): their gains and shifts;
2. it is the ``bias`` of a linear or convolution layer (``nn.Linear``, ``nn.Conv*d`` and their
   subclasses): torch's own layers declare their shift that way;
3. the module that holds it declares it: a method ``no_weight_decay()`` returning the names of
   its own parameters (relative to the module, e.g. ``{"pos_embed"}``; the convention of timm
   and of the original FractalGen code), or a declaration registered for the module's type with
   :func:`declare_no_weight_decay` (how fractalkit's built-in levels and conditioners declare
   theirs without the training wing reaching into them).

Embedding tables (``nn.Embedding``) keep their weight decay, as in the paper's code: the groups of
the five paper models and the CPU presets are exactly those of the name rule the ImageNet example
used before (``ndim < 2`` or a name containing ``pos_embed``, ``mask_token`` or
``null_embedding``; ``tests/test_trainer.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

# the packages' public names (not their modules), so the declarations survive moves inside them
from fractalkit.conditioners import Conditioner
from fractalkit.fractal import Fractal
from fractalkit.levels import ARLevel, MARLevel
from fractalkit.nn import RMSNorm

__all__ = ["declare_no_weight_decay", "no_weight_decay_parameters", "parameter_groups"]

#: normalisation layers: every parameter they hold is a gain or a shift
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm, RMSNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

#: torch layers whose ``bias`` parameter is a shift (subclasses included)
BIAS_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)

_DECLARED: dict[type[nn.Module], frozenset[str]] = {}


def declare_no_weight_decay(module_type: type[nn.Module], *names: str) -> None:
    """Declare that modules of ``module_type`` (and its subclasses) hold parameters ``names``
    (their own attribute names, e.g. ``"pos_embed"``) that get no weight decay.

    Use this for a module you cannot edit; for your own module, define a ``no_weight_decay()``
    method returning the names instead (it takes precedence over a registration).

    Args:
        module_type: an ``nn.Module`` subclass.
        names: parameter names relative to the module (a name the module does not hold is ignored).

    Raises:
        TypeError: ``module_type`` is not an ``nn.Module`` subclass or a name is not a string.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"declare_no_weight_decay: expected an nn.Module subclass, got {module_type!r}")
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"declare_no_weight_decay: names must be non-empty strings, got {names!r}")
    _DECLARED[module_type] = _DECLARED.get(module_type, frozenset()) | frozenset(names)


# fractalkit's own modules (the declarations live here so the core needs no training hook):
# learned positions and mask tokens of the levels, and the null condition of classifier-free
# guidance (held by the conditioner, and adopted by the Fractal that owns it).
declare_no_weight_decay(ARLevel, "pos_embed")
declare_no_weight_decay(MARLevel, "pos_embed", "mask_token")
declare_no_weight_decay(Conditioner, "null_embedding")
declare_no_weight_decay(Fractal, "null_embedding")


def _declared(module: nn.Module) -> frozenset[str]:
    method = getattr(module, "no_weight_decay", None)
    if callable(method):
        names = method()
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError(
                f"{type(module).__name__}.no_weight_decay() must return a collection of parameter "
                f"names, got {type(names).__name__}"
            )
        return frozenset(names)
    out: frozenset[str] = frozenset()
    for cls in type(module).__mro__:
        out |= _DECLARED.get(cls, frozenset())
    return out


def no_weight_decay_parameters(model: nn.Module) -> list[str]:
    """The names (as in ``model.named_parameters()``) of the parameters that get no weight decay.

    See the module docstring for the rules. A parameter reachable under several names (one
    shared or adopted by two modules) is exempt when any holder exempts it.

    Args:
        model: any ``nn.Module`` (unwrap DistributedDataParallel first).

    Returns:
        Parameter names, in ``named_parameters`` order.
    """
    exempt: set[int] = set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, NORM_TYPES):
            exempt.update(id(p) for p in own.values())
            continue
        names = set(_declared(module))
        if isinstance(module, BIAS_TYPES) and "bias" in own:
            names.add("bias")
        exempt.update(id(p) for n, p in own.items() if n in names)
    return [n for n, p in model.named_parameters() if id(p) in exempt]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``[{"params": decayed, "weight_decay": weight_decay},
    {"params": exempt, "weight_decay": 0.0}]`` (trainable parameters only, in
    ``named_parameters`` order; exempt ones per :func:`no_weight_decay_parameters`).

    Args:
        model: the model (unwrap DistributedDataParallel first).
        weight_decay: the decoupled weight decay of the decayed group (>= 0).

    Returns:
        Two groups, for e.g. ``torch.optim.AdamW(parameter_groups(model, 0.05), lr=...)``.

    Raises:
        ValueError: a negative or non-finite ``weight_decay``.
    """
    if not 0 <= weight_decay < float("inf"):
        raise ValueError(f"parameter_groups: weight_decay must be a finite number >= 0, got {weight_decay}")
    exempt = set(no_weight_decay_parameters(model))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
