"""Matrix factorisation: explicit ratings (biased MF) and implicit scores (BPR)."""

from __future__ import annotations

import math

import numpy as np

from models.catalogue import grown


class RatingFactorization:
    """Biased matrix factorisation of star ratings, learnt by regularised SGD.

    ``r_hat(u, i) = mu + b_u + b_i + p_u . q_i``, clipped to the range of ratings
    seen so far. Same model as River's ``reco.BiasedMF`` but with L2
    regularisation (the documented River settings use none, and overfit users
    with few ratings), per-item arrays in numpy (so every item's predicted rating
    for a user is one matrix-vector product) and a per-user learning rate that
    decays as ``1 / sqrt(1 + n_u / warm)`` so early ratings move a user fast and
    later ones refine. Memory: ``n_factors + 2`` floats per user and per item.

    Parameters
    ----------
    n_factors
        Latent dimensions.
    lr_bias, lr_latent
        SGD step sizes of biases and latent vectors.
    l2_bias, l2_latent
        L2 penalties.
    warm
        Ratings after which a user's step size has shrunk by ``1/sqrt(2)``.
    seed
        Seeds the latent initialisation.

    Examples
    --------
    >>> mf = RatingFactorization(seed=1)
    >>> for _ in range(50):
    ...     mf.learn("ann", 0, 5.0); mf.learn("bob", 0, 4.0); mf.learn("bob", 1, 1.0)
    >>> round(mf.predict("ann", 0), 1), mf.predict("ann", 1) < 3.0
    (4.8, True)
    """

    def __init__(
        self,
        n_factors: int = 10,
        lr_bias: float = 0.02,
        lr_latent: float = 0.02,
        l2_bias: float = 0.02,
        l2_latent: float = 0.05,
        warm: float = 50.0,
        seed: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.lr_bias = lr_bias
        self.lr_latent = lr_latent
        self.l2_bias = l2_bias
        self.l2_latent = l2_latent
        self.warm = warm
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.mean = 0.0
        self.n = 0
        self.low = math.inf
        self.high = -math.inf
        self.user_bias: dict[str, float] = {}
        self.user_count: dict[str, int] = {}
        self.user_vec: dict[str, np.ndarray] = {}
        self.item_bias = np.zeros(16)
        self.item_vec = np.zeros((16, n_factors))
        self._n_items = 0

    def _item(self, item: int) -> None:
        if item >= self._n_items:
            self.item_bias = grown(self.item_bias, item + 1)
            self.item_vec = grown(self.item_vec, item + 1)
            new = item + 1 - self._n_items
            self.item_vec[self._n_items : item + 1] = self._rng.normal(
                0.0, 0.1, (new, self.n_factors)
            )
            self._n_items = item + 1

    def _user(self, user: str) -> np.ndarray:
        vec = self.user_vec.get(user)
        if vec is None:
            vec = self._rng.normal(0.0, 0.1, self.n_factors)
            self.user_vec[user] = vec
            self.user_bias[user] = 0.0
            self.user_count[user] = 0
        return vec

    def _clip(self, value: float) -> float:
        if self.n == 0:
            return value
        return min(self.high, max(self.low, value))

    def predict(self, user: str, item: int) -> float:
        """Predicted rating (the running mean for an unknown user or item)."""
        value = self.mean + self.user_bias.get(user, 0.0)
        if item < self._n_items:
            value += float(self.item_bias[item])
            vec = self.user_vec.get(user)
            if vec is not None:
                value += float(vec @ self.item_vec[item])
        return self._clip(value)

    def predict_all(self, user: str, n: int) -> np.ndarray:
        """Predicted ratings of items ``0..n-1`` for ``user`` (vectorised, unclipped)."""
        out = np.full(n, self.mean + self.user_bias.get(user, 0.0))
        m = min(n, self._n_items)
        out[:m] += self.item_bias[:m]
        vec = self.user_vec.get(user)
        if vec is not None:
            out[:m] += self.item_vec[:m] @ vec
        return out

    def learn(self, user: str, item: int, rating: float) -> None:
        """One SGD step on ``(user, item, rating)``."""
        self._item(item)
        p = self._user(user)
        self.n += 1
        self.mean += (rating - self.mean) / self.n
        self.low = min(self.low, rating)
        self.high = max(self.high, rating)
        q = self.item_vec[item]
        err = rating - (
            self.mean + self.user_bias[user] + float(self.item_bias[item]) + float(p @ q)
        )
        count = self.user_count[user]
        self.user_count[user] = count + 1
        scale = 1.0 / math.sqrt(1.0 + count / self.warm)
        lb, ll = self.lr_bias * scale, self.lr_latent * scale
        self.user_bias[user] += lb * (err - self.l2_bias * self.user_bias[user])
        self.item_bias[item] += self.lr_bias * (err - self.l2_bias * self.item_bias[item])
        p_old = p.copy()
        p += ll * (err * q - self.l2_latent * p)
        q += self.lr_latent * (err * p_old - self.l2_latent * q)


class ImplicitFactorization:
    """Matrix factorisation of implicit feedback, learnt online with BPR.

    For a positive ``(user, item)`` it samples ``n_negatives`` items uniformly
    from the catalogue and takes one Bayesian-personalised-ranking step per pair
    so that ``p_u . q_pos + b_pos`` exceeds ``p_u . q_neg + b_neg``. The step is
    scaled by the event's strength (a purchase moves more than a click); a
    return or a low rating is learnt as a pair with the item in the negative
    role. Memory: ``n_factors`` floats per user, ``n_factors + 1`` per item.

    Parameters
    ----------
    n_factors
        Latent dimensions.
    lr
        SGD step size.
    l2
        L2 penalty.
    n_negatives
        Sampled negatives per positive.
    seed
        Seeds initialisation and negative sampling.

    Examples
    --------
    >>> bpr = ImplicitFactorization(seed=0)
    >>> for step in range(300):
    ...     bpr.learn("ann", step % 2, 1.0, n_items=6)        # ann likes 0 and 1
    ...     bpr.learn("bob", 2 + step % 2, 1.0, n_items=6)    # bob likes 2 and 3
    >>> s = bpr.scores("ann", 6)
    >>> bool(min(s[0], s[1]) > max(s[2], s[3]))
    True
    """

    def __init__(
        self,
        n_factors: int = 16,
        lr: float = 0.05,
        l2: float = 0.01,
        n_negatives: int = 2,
        seed: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.lr = lr
        self.l2 = l2
        self.n_negatives = n_negatives
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.user_vec: dict[str, np.ndarray] = {}
        self.item_vec = np.zeros((16, n_factors))
        self.item_bias = np.zeros(16)
        self._n_items = 0

    def _item(self, item: int) -> None:
        if item >= self._n_items:
            self.item_vec = grown(self.item_vec, item + 1)
            self.item_bias = grown(self.item_bias, item + 1)
            new = item + 1 - self._n_items
            self.item_vec[self._n_items : item + 1] = self._rng.normal(
                0.0, 0.1, (new, self.n_factors)
            )
            self._n_items = item + 1

    def scores(self, user: str, n: int) -> np.ndarray:
        """Preference scores of items ``0..n-1`` (zeros for an unknown user)."""
        out = np.zeros(n)
        m = min(n, self._n_items)
        vec = self.user_vec.get(user)
        out[:m] = self.item_bias[:m]
        if vec is not None:
            out[:m] += self.item_vec[:m] @ vec
        return out

    def learn(self, user: str, item: int, weight: float, n_items: int) -> None:
        """BPR steps for ``item`` (positive if ``weight`` > 0, else negative)."""
        self._item(max(item, n_items - 1))
        p = self.user_vec.get(user)
        if p is None:
            p = self._rng.normal(0.0, 0.1, self.n_factors)
            self.user_vec[user] = p
        lr = self.lr * min(abs(weight), 2.0)
        negatives = self._rng.integers(0, n_items, self.n_negatives)
        for other in negatives.tolist():
            if other == item:
                continue
            pos, neg = (item, other) if weight > 0 else (other, item)
            q_pos, q_neg = self.item_vec[pos], self.item_vec[neg]
            diff = q_pos - q_neg
            x = float(p @ diff) + self.item_bias[pos] - self.item_bias[neg]
            g = 1.0 / (1.0 + math.exp(min(x, 30.0)))  # sigmoid(-x)
            p_old = p.copy()
            p += lr * (g * diff - self.l2 * p)
            q_pos += lr * (g * p_old - self.l2 * q_pos)
            q_neg += lr * (-g * p_old - self.l2 * q_neg)
            self.item_bias[pos] += lr * (g - self.l2 * self.item_bias[pos])
            self.item_bias[neg] += lr * (-g - self.l2 * self.item_bias[neg])
