"""The original FractalGen's weight initialisation, for a module to apply to its own layers.

Each part that wants it calls :func:`xavier_init` on itself (in its ``reset_parameters``), so no
owner walks its submodules by name to skip the ones that initialise themselves.
"""

from __future__ import annotations

from torch import nn


def xavier_init(module: nn.Module) -> None:
    """Re-initialise ``module``'s layers as the original does, in ``module.modules()`` order.

    Every ``nn.Linear`` gets xavier-uniform weights and a zero bias, every ``nn.Embedding``
    N(0, 0.02) weights; LayerNorms and other layers keep their (1, 0) defaults. The order is
    fixed (registration order), so the same seed gives the same weights.

    Args:
        module: the module whose layers (itself included) are re-initialised in place.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
