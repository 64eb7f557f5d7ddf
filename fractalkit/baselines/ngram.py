"""Count n-gram models with interpolated Kneser-Ney smoothing: the baseline every sequence
likelihood should be compared with.

Shape letters: T symbols in all (sequences concatenated), V values, n the order (context of
n - 1 symbols).

Interpolated Kneser-Ney (Chen and Goodman 1998, section 3.5): for the highest order,

    P_n(w | h) = max(c(h w) - D_n, 0) / c(h) + D_n N1+(h .) / c(h) * P_{n-1}(w | h'),

where ``h'`` drops the oldest symbol of ``h``; lower orders use *continuation* counts (the
number of distinct symbols seen before ``h w``) in place of ``c``, and order 0 is uniform over
the V values. ``D_k = n1 / (n1 + 2 n2)`` from the counts of counts of order k. A context never
seen falls back to the lower order, so every conditional sums to exactly 1 over the V values.

Contexts never cross sequence boundaries: the first symbols of a sequence are scored with the
shorter context they have (order ``t + 1`` at position t). Everything is vectorised with numpy
(``np.unique`` over int64 keys), so a million symbols of order 6 take seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fractalkit.validation import check_count

__all__ = ["NGramModel", "choose_order"]


def _as_sequences(sequences: Sequence[np.ndarray] | np.ndarray, num_values: int) -> list[np.ndarray]:
    """A list of 1-D int64 arrays, checked to lie in ``[0, V)``."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 1:
        sequences = [sequences]
    out = []
    for i, s in enumerate(sequences):
        s = np.asarray(s)
        if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
            raise ValueError(f"NGramModel: sequence {i} must be a 1-D integer array, got {s.dtype} {s.shape}")
        if s.size and (s.min() < 0 or s.max() >= num_values):
            raise ValueError(
                f"NGramModel: sequence {i} has values in [{s.min()}, {s.max()}], outside [0, {num_values})"
            )
        out.append(s.astype(np.int64))
    if not out:
        raise ValueError("NGramModel: no sequences given")
    return out


def _concat(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(symbols [T], position of each symbol in its own sequence [T])``."""
    x = np.concatenate(seqs)
    pos = np.concatenate([np.arange(s.size) for s in seqs])
    return x, pos


def _gram_keys(x: np.ndarray, length: int, num_values: int) -> np.ndarray:
    """int64 ``[T]``: key of the ``length``-gram ending at each position (garbage where the
    position has fewer than ``length - 1`` predecessors; callers mask those)."""
    keys = np.zeros_like(x)
    for i in range(length - 1, -1, -1):  # oldest symbol first, so it is the most significant
        shifted = np.empty_like(x)
        shifted[:i] = 0
        shifted[i:] = x[: x.size - i]
        keys = keys * num_values + shifted
    return keys


def _lookup(table_keys: np.ndarray, table_values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``table_values`` at ``keys`` (0 where a key is absent); tables are sorted by key."""
    if table_keys.size == 0:
        return np.zeros(keys.shape, dtype=table_values.dtype)
    idx = np.clip(np.searchsorted(table_keys, keys), 0, table_keys.size - 1)
    return np.where(table_keys[idx] == keys, table_values[idx], 0)


def _discount(counts: np.ndarray) -> float:
    """Kneser-Ney's ``n1 / (n1 + 2 n2)``; 0.5 when the counts of counts are degenerate."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 > 0 else 0.5


class NGramModel:
    """An interpolated Kneser-Ney n-gram model over V values.

    Args:
        order: n >= 1 (1: a smoothed unigram; 6: contexts of 5 symbols).
        num_values: V >= 2; ``V ** order`` must fit in 62 bits (keys are int64).

    Raises:
        ValueError: for an order below 1, V below 2, or keys that would overflow.

    Example:
        >>> m = NGramModel(3, 4).fit([np.array([0, 1, 2, 3] * 50)])
        >>> float(m.log_probs([np.array([0, 1, 2])])[2]) > -0.1  # 2 after "0 1": near certain
        True
    """

    def __init__(self, order: int, num_values: int) -> None:
        order = check_count("NGramModel", "order", order)
        num_values = check_count("NGramModel", "num_values", num_values, minimum=2)
        if order * np.log2(num_values) > 62:
            raise ValueError(
                f"NGramModel: {num_values} ** {order} does not fit in int64 keys; lower the order"
            )
        self.order = order
        self.num_values = num_values
        self._tables: list[dict[str, np.ndarray | float]] | None = None

    def fit(self, sequences: Sequence[np.ndarray] | np.ndarray) -> NGramModel:
        """Count the n-grams of ``sequences`` (a 1-D array or a list of them; none spans two).

        Returns:
            ``self``.

        Raises:
            ValueError: no sequences, or no symbols at all (nothing to count), or values
                outside ``[0, V)``.
        """
        x, pos = _concat(_as_sequences(sequences, self.num_values))
        if x.size == 0:
            raise ValueError("NGramModel.fit: the sequences hold no symbols; there is nothing to count")
        v, n = self.num_values, self.order
        tables: list[dict[str, np.ndarray | float]] = [{} for _ in range(n)]
        upper_grams = None  # the unique (k+2)-gram keys, for order k's continuation counts
        for k in range(n - 1, -1, -1):  # k: context length; gram length k + 1
            keys = _gram_keys(x, k + 1, v)[pos >= k]
            grams, counts = np.unique(keys, return_counts=True)
            if upper_grams is not None:  # continuation counts: distinct left extensions
                grams, counts = np.unique(upper_grams % (v ** (k + 1)), return_counts=True)
            contexts, first = np.unique(grams // v, return_index=True)
            totals = np.add.reduceat(counts, first) if grams.size else np.zeros(0, np.int64)
            types = np.diff(np.append(first, grams.size))
            tables[k] = {"grams": grams, "counts": counts, "contexts": contexts,
                         "totals": totals, "types": types, "discount": _discount(counts)}
            upper_grams = np.unique(keys)
        self._tables = tables
        return self

    def log_probs(self, sequences: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Natural-log probability of every symbol given its (truncated) context.

        Args:
            sequences: a 1-D int array or a list of them (each scored from its own start).

        Returns:
            float64 ``[T]``, the sequences' symbols concatenated in order.

        Raises:
            RuntimeError: before :meth:`fit`.
        """
        if self._tables is None:
            raise RuntimeError("NGramModel.log_probs: call fit first")
        x, pos = _concat(_as_sequences(sequences, self.num_values))
        v = self.num_values
        prob = np.full(x.shape, 1.0 / v)  # order 0: uniform
        for k in range(self.order):
            t = self._tables[k]
            keys = _gram_keys(x, k + 1, v)
            context = keys // v
            total = _lookup(t["contexts"], t["totals"], context).astype(np.float64)
            types = _lookup(t["contexts"], t["types"], context).astype(np.float64)
            count = _lookup(t["grams"], t["counts"], keys).astype(np.float64)
            d = t["discount"]
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            mixed = (np.maximum(count - d, 0.0) + d * types * prob) / safe
            prob = np.where((pos >= k) & seen, mixed, prob)
        return np.log(prob)

    def bits(self, sequences: Sequence[np.ndarray] | np.ndarray) -> float:
        """Mean bits per symbol over ``sequences``.

        Raises:
            ValueError: the sequences hold no symbol (a mean over nothing is undefined).
        """
        logp = self.log_probs(sequences)
        if logp.size == 0:
            raise ValueError("NGramModel.bits: the sequences hold no symbols; bits per symbol is undefined")
        return float(-logp.mean() / np.log(2))


def choose_order(
    train: Sequence[np.ndarray] | np.ndarray,
    valid: Sequence[np.ndarray] | np.ndarray,
    num_values: int,
    orders: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
) -> tuple[int, dict[int, float]]:
    """The order with the fewest validation bits per symbol (fit on ``train``).

    Returns:
        ``(best order, {order: validation bits per symbol})``; orders whose keys would overflow
        are left out.

    Raises:
        ValueError: no orders, an order below 1, V below 2, empty ``train`` or ``valid``, a
            non-finite score, or no order fitting int64 keys.
        TypeError: an order or V that is not an integer.
    """
    num_values = check_count("choose_order", "num_values", num_values, minimum=2)
    if isinstance(orders, str | bytes) or not isinstance(orders, Sequence | range) or not len(orders):
        raise ValueError(f"choose_order: orders must be a non-empty sequence of ints >= 1, got {orders!r}")
    orders = [check_count("choose_order", f"orders[{i}]", n) for i, n in enumerate(orders)]
    scores = {}
    for n in orders:
        if n * np.log2(num_values) > 62:
            continue
        scores[n] = NGramModel(n, num_values).fit(train).bits(valid)
        if not np.isfinite(scores[n]):
            raise ValueError(f"choose_order: order {n} scored {scores[n]} bits per symbol; no order can be chosen from it")
    if not scores:
        raise ValueError(f"choose_order: no order in {list(orders)} fits int64 keys for V={num_values}")
    return min(scores, key=scores.get), scores
