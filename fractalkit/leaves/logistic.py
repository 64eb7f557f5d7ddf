"""A discretised mixture of logistics over V ordered values (PixelCNN++'s output distribution).

Shape letters: M instances, T condition tokens, D condition width, E elements, K mixture
components, V values.

A plug-in leaf: it implements :meth:`Leaf.element_logits` (all V bins: sampling) and
:meth:`Leaf.observed_log_probs` (the observed bin only: scoring and training, whose cost does not
grow with V), and registers its config; the rest of fractalkit (scoring, sampling, guidance, completion) works with it unchanged.
With ``sampling="direct"`` it also draws values without the V bins (component, then inverse
CDF: :func:`sample_discretized_logistic`), so 16-bit audio samples cost what 8-bit ones do. Value
``v`` in ``[0, V)`` is the bin ``[c_v - h, c_v + h]`` around ``c_v = 2 v / (V - 1) - 1`` with
``h = 1 / (V - 1)``; the first and last bins extend to -inf and +inf, so the bin probabilities
of each logistic telescope to exactly 1:

    P(v) = sum_k pi_k [sigmoid((c_v + h - mu_k) / s_k) - sigmoid((c_v - h - mu_k) / s_k)].

Unlike PixelCNN++ (which switches to a mid-point density approximation for tiny bins, so its
probabilities do not sum to 1), every bin is computed in log space without approximation:
``sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a))`` for ``a > b``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalkit.config import BuildContext, LeafConfig
from fractalkit.leaves.base import Leaf
from fractalkit.protocol import accumulation_dtype
from fractalkit.protocol.contexts import DecodeContext
from fractalkit.registry import register
from fractalkit.sampling.rng import uniform

__all__ = [
    "SAMPLINGS",
    "DiscretizedLogisticLeaf",
    "DiscretizedLogisticLeafConfig",
    "discretized_logistic_log_prob_at",
    "discretized_logistic_log_probs",
    "sample_discretized_logistic",
    "tempered_logistic_parameters",
]

#: smallest log-scale of a component: keeps bins of a sharp component representable
MIN_LOG_SCALE = -7.0

#: how :class:`DiscretizedLogisticLeaf` draws a value: ``"bins"`` (all V bin probabilities, the
#: generic leaf path, the default) or ``"direct"`` (component, then inverse CDF; cost O(K))
SAMPLINGS = ("bins", "direct")


def discretized_logistic_log_prob_at(
    logit_weights: Tensor, means: Tensor, log_scales: Tensor, values: Tensor, num_values: int
) -> Tensor:
    """Log-probability of given values under a discretised mixture of logistics.

    Only the bins asked for are evaluated (one CDF difference per value and component), so the
    cost does not grow with V: 16-bit audio (V = 65,536) costs what 8-bit audio costs.

    Args:
        logit_weights: ``[..., K]`` unnormalised mixture weights (log pi_k up to a constant).
        means: ``[..., K]`` component means mu_k on the value scale ``[-1, 1]``.
        log_scales: ``[..., K]`` log s_k (clamped below at ``MIN_LOG_SCALE``).
        values: int64 ``[...]`` in ``[0, V)`` (broadcast against the parameters' leading dims).
        num_values: V >= 2.

    Returns:
        ``[...]`` log P(value), in the dtype of the parameters.
    """
    h = 1.0 / (num_values - 1)
    v = values[..., None]  # [..., 1]
    centres = v.to(means.dtype) * (2 * h) - 1  # [..., 1]: c_v = 2 v / (V - 1) - 1
    inv_s = torch.exp(-log_scales.clamp(min=MIN_LOG_SCALE))  # [..., K]
    a = (centres + h - means) * inv_s  # [..., K]: upper edge
    b = (centres - h - means) * inv_s  # [..., K]: lower edge
    # log(sigmoid(a) - sigmoid(b)) = logsig(a) + logsig(-b) + log(1 - exp(b - a)), b - a = -2h/s
    inner = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-(2 * h) * inv_s))
    per_component = torch.where(
        v == 0, F.logsigmoid(a),  # v = 0: (-inf, c_0 + h]
        torch.where(v == num_values - 1, F.logsigmoid(-b), inner),  # v = V - 1: [c - h, inf)
    )
    return torch.logsumexp(logit_weights.log_softmax(-1) + per_component, dim=-1)


def discretized_logistic_log_probs(
    logit_weights: Tensor, means: Tensor, log_scales: Tensor, num_values: int
) -> Tensor:
    """Log-probabilities of all V values under a discretised mixture of logistics.

    Args:
        logit_weights: ``[..., K]`` unnormalised mixture weights (log pi_k up to a constant).
        means: ``[..., K]`` component means mu_k on the value scale ``[-1, 1]``.
        log_scales: ``[..., K]`` log s_k (clamped below at ``MIN_LOG_SCALE``).
        num_values: V >= 2.

    Returns:
        ``[..., V]`` log P(v), in the dtype of the inputs; ``logsumexp`` over V is 0 up to
        rounding (exactly 1 in exact arithmetic: no approximation is made).
    """
    values = torch.arange(num_values, device=means.device)  # [V]
    return discretized_logistic_log_prob_at(
        logit_weights[..., None, :], means[..., None, :], log_scales[..., None, :], values, num_values
    )


def tempered_logistic_parameters(
    logit_weights: Tensor, log_scales: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """The mixture that ``sampling="direct"`` draws from at temperature T.

    Temperature acts on the mixture's parameters, not on the V bin probabilities: the mixture
    logits are divided by T and every component's scale is multiplied by T (after the
    ``MIN_LOG_SCALE`` clamp; the likelihood functions clamp the result again). T = 1 is the
    model's law exactly; T < 1 sharpens both the choice of component and each logistic. (The
    ``"bins"`` path instead raises every bin probability to the power 1/T and renormalises: the
    same at T = 1, a different law otherwise.)

    Args:
        logit_weights: ``[..., K]`` unnormalised mixture weights.
        log_scales: ``[..., K]`` log s_k.
        temperature: T > 0.

    Returns:
        ``(logit_weights / T, clamp(log_scales, MIN_LOG_SCALE) + log T)``, shapes unchanged.
    """
    if not temperature > 0:
        raise ValueError(f"tempered_logistic_parameters: temperature must be > 0, got {temperature}")
    if temperature == 1:
        return logit_weights, log_scales
    return logit_weights / temperature, log_scales.clamp(min=MIN_LOG_SCALE) + math.log(temperature)


def sample_discretized_logistic(
    logit_weights: Tensor,
    means: Tensor,
    log_scales: Tensor,
    num_values: int,
    *,
    generator: torch.Generator | None,
) -> Tensor:
    """Draw values from a discretised mixture of logistics without building its V bins.

    Exact by construction: a component k is drawn with probability pi_k (inverse CDF of the
    softmax of ``logit_weights``), then a continuous value ``z = mu_k + s_k logit(u)`` (the
    logistic's inverse CDF), then the bin holding z, ``round((z + 1) / (2 h))``, clamped to
    ``[0, V)``: the first and last bins take the tails, exactly as the likelihood defines them
    (:func:`discretized_logistic_log_prob_at`). Cost O(K) per value, whatever V. Two float32
    uniforms per value (from ``generator``; the stream advances by ``2 * values.numel()``);
    the draw is exact up to their 2^-24 resolution (an error below 6e-8 in any cumulative
    probability). Arithmetic is float64.

    Args:
        logit_weights: ``[..., K]`` unnormalised mixture weights (log pi_k up to a constant).
        means: ``[..., K]`` component means mu_k on the value scale ``[-1, 1]``.
        log_scales: ``[..., K]`` log s_k (clamped below at ``MIN_LOG_SCALE``, as in scoring).
        num_values: V >= 2.
        generator: the random stream (None: torch's global one).

    Returns:
        int64 ``[...]`` values in ``[0, V)``.

    Raises:
        ValueError: V is not an integer >= 2, or the three parameter tensors differ in shape.
    """
    if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 2:
        raise ValueError(f"sample_discretized_logistic: num_values must be an integer >= 2, got {num_values!r}")
    if not logit_weights.shape == means.shape == log_scales.shape or means.dim() < 1:
        raise ValueError(
            "sample_discretized_logistic: logit_weights, means and log_scales must share one shape "
            f"[..., K], got {list(logit_weights.shape)}, {list(means.shape)}, {list(log_scales.shape)}"
        )
    shape, k = means.shape[:-1], means.shape[-1]
    u = uniform((*shape, 2), generator=generator, device=means.device).double()  # [..., 2]
    probs = logit_weights.double().softmax(-1)  # [..., K]
    cdf = probs.cumsum(-1)
    component = (cdf < u[..., :1] * cdf[..., -1:]).sum(-1, keepdim=True).clamp_(max=k - 1)  # [..., 1]
    mu = means.double().gather(-1, component).squeeze(-1)  # [...]
    s = log_scales.double().clamp(min=MIN_LOG_SCALE).gather(-1, component).squeeze(-1).exp()
    v = u[..., 1]
    z = mu + s * (torch.log(v) - torch.log1p(-v))  # logistic inverse CDF; v = 0 gives -inf
    h = 1.0 / (num_values - 1)
    return ((z + 1) / (2 * h) + 0.5).floor().clamp(0, num_values - 1).long()


class DiscretizedLogisticLeaf(Leaf):
    """A discretised mixture of K logistics per element, its parameters a linear map of c.

    Elements are independent given the condition (``autoregressive = False``); with E = 1 (one
    audio sample, one pixel channel) this is the whole distribution of the element. The
    likelihood is exact. Compared with a V-way categorical head it has ``3 K`` outputs per
    element instead of V and builds in that nearby values have similar probabilities.

    Sampling (``sampling``, a decoding choice that is not part of the config: set it on a built
    or loaded leaf, ``model.leaf.sampling = "direct"``):

    - ``"bins"`` (default): the generic leaf path over all V bin probabilities
      (:meth:`element_logits`), with temperature, guidance and the filter on the bins.
    - ``"direct"``: :func:`sample_discretized_logistic` (component, inverse CDF, bin; O(K) per
      value, not O(V)) with temperature as in :func:`tempered_logistic_parameters`; the
      returned log-probabilities are those of the tempered mixture (observed bin only). It
      draws the same law as ``"bins"`` at temperature 1, but not the same values from a seed
      (a different use of the random stream: two uniforms per value), so pinned samples keep
      ``"bins"``. Classifier-free guidance (and so the low-probability filter, which acts only
      with guidance) combines two distributions bin by bin, which no mixture of logistics
      represents: guided decoding falls back to the ``"bins"`` path, all V bins per value.
      (:func:`fractalkit.testing.sampling_law` describes the ``"bins"`` path's temperature: to
      check ``"direct"`` at T != 1, pass the tempered mixture's law as ``law=``.)

    Args:
        event_shape: shape of one instance (E = its number of elements).
        cond_dim: D of the incoming condition (token 0 is read).
        cond_tokens: T of the incoming condition.
        num_values: V ordered values.
        num_components: K.
        channel_weights: training-only per-element weights (see :class:`Leaf`).
        sampling: ``"bins"`` or ``"direct"`` (see above).

    Raises:
        ValueError: if ``num_components`` is not a positive integer (or V < 2), or
            ``sampling`` is not one of :data:`SAMPLINGS`.
    """

    autoregressive = False

    def __init__(
        self,
        event_shape: tuple[int, ...],
        cond_dim: int,
        cond_tokens: int,
        num_values: int,
        num_components: int = 10,
        channel_weights: tuple[float, ...] | None = None,
        sampling: str = "bins",
    ) -> None:
        super().__init__(event_shape, cond_dim, cond_tokens, num_values, channel_weights)
        self.sampling = sampling
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ValueError(
                f"DiscretizedLogisticLeaf: num_components must be a positive int, got {num_components!r}"
            )
        self.num_components = num_components
        e = math.prod(self.event_shape)
        self.norm = nn.LayerNorm(cond_dim, eps=1e-6)
        self.head = nn.Linear(cond_dim, e * 3 * num_components)  # weights, means, log-scales
        nn.init.xavier_uniform_(self.head.weight)
        with torch.no_grad():
            # Spread the initial means over [-1, 1] and start with scales of a few bins, so the
            # components do not all begin on the same value.
            bias = self.head.bias.view(e, 3, num_components)
            bias.zero_()
            bias[:, 1] = torch.linspace(-0.9, 0.9, num_components)
            # Scales of 8 bins, but never narrower than 8 bins of 8-bit audio: with V = 65,536
            # a component 8 bins wide gives the observed value almost no mass at first.
            bias[:, 2] = math.log(max(8.0 / (num_values - 1), 8.0 / 255))

    @property
    def sampling(self) -> str:
        """How values are drawn: ``"bins"`` (all V bins) or ``"direct"`` (O(K) per value)."""
        return self._sampling

    @sampling.setter
    def sampling(self, value: str) -> None:
        if value not in SAMPLINGS:
            raise ValueError(
                f"DiscretizedLogisticLeaf: sampling must be one of {SAMPLINGS} ('bins': all V bins, "
                f"'direct': component + inverse CDF), got {value!r}"
            )
        self._sampling = value

    def _parameters_of(self, cond: Tensor, rows: int, elements: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(logit_weights, means, log_scales)``, each ``[M, E, K]`` in the accumulation dtype."""
        params = self.head(self.norm(cond[:, 0])).view(rows, elements, 3, self.num_components)
        weights, means, log_scales = params.to(accumulation_dtype(params.dtype)).unbind(2)
        return weights, means, log_scales

    def _decode(
        self, x: Tensor, known: Tensor, cond: Tensor, ctx: DecodeContext
    ) -> tuple[Tensor, Tensor]:
        """``"direct"`` sampling without guidance; otherwise the generic all-bins path."""
        if self._sampling == "bins" or ctx.guided:
            return super()._decode(x, known, cond, ctx)
        rows, e = x.shape[0], self.num_elements
        cur = x.reshape(rows, e)  # [M, E]
        weights, means, log_scales = self._parameters_of(cond, rows, e)  # each [M, E, K]
        weights, log_scales = tempered_logistic_parameters(weights, log_scales, ctx.options.temperature)
        if ctx.force:
            value, decided = cur, torch.ones_like(cur, dtype=torch.bool)
        else:
            if not all(bool(torch.isfinite(t).all()) for t in (weights, means, log_scales)):
                raise ValueError(
                    f"{type(self).__name__} (level {ctx.depth}): the mixture parameters to sample "
                    "from hold NaN or infinite values (diverged weights); nothing was drawn"
                )
            fixed = known.reshape(rows, e)
            drawn = sample_discretized_logistic(weights, means, log_scales, self.num_values, generator=ctx.generator)
            value, decided = torch.where(fixed, cur, drawn), ~fixed
        lp = discretized_logistic_log_prob_at(weights, means, log_scales, value, self.num_values)  # [M, E]
        logp = torch.where(decided, lp, torch.zeros_like(lp)).sum(-1)
        return value.reshape(x.shape), logp.to(accumulation_dtype(cond.dtype))

    def element_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """Bin log-probabilities of every element.

        Args:
            x: int64 ``[M, E]`` values (unused: elements are independent given ``cond``).
            cond: ``[M, T, D]``.

        Returns:
            ``[M, E, V]`` normalised log-probabilities (valid logits: ``log_softmax`` leaves
            them unchanged up to rounding).
        """
        params = self.head(self.norm(cond[:, 0]))  # [M, E*3K]
        params = params.view(x.shape[0], x.shape[1], 3, self.num_components)  # [M, E, 3, K]
        weights, means, log_scales = params.unbind(2)  # each [M, E, K]
        return discretized_logistic_log_probs(weights, means, log_scales, self.num_values)

    def observed_log_probs(self, x: Tensor, cond: Tensor) -> Tensor:
        """Log-probability of each observed value: one bin per element, never all V.

        Args:
            x: int64 ``[M, E]`` values.
            cond: ``[M, T, D]``.

        Returns:
            ``[M, E]`` natural-log probabilities (float32 or wider, as the leaf base scores).
        """
        params = self.head(self.norm(cond[:, 0]))  # [M, E*3K]
        params = params.view(x.shape[0], x.shape[1], 3, self.num_components)  # [M, E, 3, K]
        acc = accumulation_dtype(params.dtype)
        weights, means, log_scales = params.to(acc).unbind(2)  # each [M, E, K]
        return discretized_logistic_log_prob_at(weights, means, log_scales, x, self.num_values)


@register("discretized_logistic")
@dataclasses.dataclass(frozen=True)
class DiscretizedLogisticLeafConfig(LeafConfig):
    """Configuration of a :class:`DiscretizedLogisticLeaf`.

    Attributes:
        num_values: V, ordered values per element (256 for 8-bit audio).
        num_components: K logistics in the mixture.
        channel_weights: training-only per-element weights, or None.
    """

    num_values: int = 256
    num_components: int = 10
    channel_weights: tuple[float, ...] | None = None

    def build(self, ctx: BuildContext) -> DiscretizedLogisticLeaf:
        """The leaf for instances of ``ctx.event_shape`` under ``[*, cond_tokens, cond_dim]`` conditions."""
        return DiscretizedLogisticLeaf(
            tuple(ctx.event_shape),
            ctx.cond_dim,
            ctx.cond_tokens,
            self.num_values,
            self.num_components,
            self.channel_weights,
        )
