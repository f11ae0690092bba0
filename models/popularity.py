"""Time-decayed and all-time item popularity, the cold-start fallback."""

from __future__ import annotations

import math

import numpy as np

from models.catalogue import grown


class DecayedPopularity:
    """Exponentially time-decayed popularity of every item, plus all-time counts.

    A weight ``w`` learnt at event time ``t`` counts ``w * 2 ** (-(now - t) / half_life)``
    at time ``now``. Instead of decaying every item on every event (O(items)), the
    weight is stored scaled up by ``2 ** ((t - t_ref) / half_life)``; ranking is
    unaffected by the common factor, and the array is rescaled (rarely) before
    the factors overflow. Memory is one float per item and field.

    Parameters
    ----------
    half_life
        Seconds after which an interaction counts half.

    Examples
    --------
    >>> pop = DecayedPopularity(half_life=10.0)
    >>> pop.learn_one(0, 1.0, t=0.0)
    >>> pop.learn_one(1, 1.0, t=10.0)
    >>> pop.recent(2).round(3).tolist()
    [0.5, 1.0]
    >>> pop.all_time(2).tolist()
    [1.0, 1.0]
    """

    def __init__(self, half_life: float = 86_400.0) -> None:
        self.half_life = half_life
        self._rate = math.log(2.0) / half_life
        self._scaled = np.zeros(16)
        self._counts = np.zeros(16)
        self.t_ref: float | None = None
        self.t_last: float | None = None

    def learn_one(self, item: int, weight: float, t: float) -> None:
        """Add ``weight`` to ``item`` at event time ``t`` (weights may be negative)."""
        if self.t_ref is None:
            self.t_ref = t
        if self.t_last is None or t > self.t_last:
            self.t_last = t
        exponent = self._rate * (t - self.t_ref)
        if exponent > 50.0:  # rescale before exp() overflows: O(items), rarely
            self._scaled *= math.exp(-exponent)
            self.t_ref = t
            exponent = 0.0
        if item >= self._scaled.shape[0] or item >= self._counts.shape[0]:
            self._scaled = grown(self._scaled, item + 1)
            self._counts = grown(self._counts, item + 1)
        self._scaled[item] = max(0.0, self._scaled.item(item) + weight * math.exp(exponent))
        self._counts[item] = max(0.0, self._counts.item(item) + weight)

    def assign(self, item: int, recent: float, at: float, all_time: float | None = None) -> None:
        """Overwrite ``item``'s decayed weight (``recent`` as of event time ``at``) and,
        unless ``None``, its all-time weight: a published value replacing the local one."""
        if self.t_ref is None:
            self.t_ref = at
        if self.t_last is None or at > self.t_last:
            self.t_last = at
        exponent = self._rate * (at - self.t_ref)
        if exponent > 50.0:
            self._scaled *= math.exp(-exponent)
            self.t_ref = at
            exponent = 0.0
        if item >= self._scaled.shape[0] or item >= self._counts.shape[0]:
            self._scaled = grown(self._scaled, item + 1)
            self._counts = grown(self._counts, item + 1)
        self._scaled[item] = max(0.0, recent * math.exp(exponent))
        if all_time is not None:
            self._counts[item] = max(0.0, all_time)

    def recent(self, n: int) -> np.ndarray:
        """Decayed popularity of items ``0..n-1`` in weight units at the latest event time."""
        out = np.zeros(n)
        m = min(n, self._scaled.shape[0])
        if self.t_ref is None or self.t_last is None:
            return out
        out[:m] = self._scaled[:m] * math.exp(-self._rate * (self.t_last - self.t_ref))
        return out

    def all_time(self, n: int) -> np.ndarray:
        """Net all-time weight of items ``0..n-1``."""
        out = np.zeros(n)
        m = min(n, self._counts.shape[0])
        out[:m] = self._counts[:m]
        return out
