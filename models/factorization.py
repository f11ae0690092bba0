"""Matrix factorisation: explicit ratings (biased MF) and implicit scores (BPR)."""

from __future__ import annotations

import math

import numpy as np

from models.catalogue import grown

#: AdaGrad's starting sum of squared gradients: the first step is at most lr / 0.1.
GRAD_START = 1e-2


class UserRows:
    """Per-user float vectors of one length, as rows of shared fixed-size blocks.

    A numpy array per user costs its 112-byte header on top of its data (224
    bytes for 16 floats); a row of a block costs its data and the user's row
    number. Blocks are never reallocated, so adding users copies nothing, and a
    forgotten user's row goes to the next new user. :meth:`get` returns a view:
    updating it in place updates the stored row.

    >>> rows = UserRows(2)
    >>> rows.add("a", np.array([1.0, 2.0]))[:] *= 2
    >>> rows.get("a").tolist(), rows.get("b"), "a" in rows, len(rows)
    ([2.0, 4.0], None, True, 1)
    >>> rows.pop("a"), rows.pop("a"), len(rows)
    (True, False, 0)
    >>> rows.add("b", np.zeros(2)).tolist(), rows.rows  # b reuses a's row
    ([0.0, 0.0], {'b': 0})
    """

    BLOCK_BITS = 10  # 1,024 rows per block (written out in get and _view)

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: dict[str, int] = {}
        self.blocks: list[np.ndarray] = []
        self.free: list[int] = []  # rows of forgotten users, reused first
        self.used = 0  # rows ever handed out (the next fresh one)

    def __contains__(self, user: object) -> bool:
        return user in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def _view(self, row: int) -> np.ndarray:
        return self.blocks[row >> 10][row & 1023]  # BLOCK_BITS, inline: per event

    def get(self, user: str) -> np.ndarray | None:
        """The user's row (a view), ``None`` for an unknown user."""
        row = self.rows.get(user)
        if row is None:
            return None
        return self.blocks[row >> 10][row & 1023]

    def add(self, user: str, values: np.ndarray) -> np.ndarray:
        """Store ``values`` as ``user``'s row (a new user); the row's view."""
        if self.free:
            row = self.free.pop()
        else:
            row = self.used
            self.used += 1
            if row >> self.BLOCK_BITS >= len(self.blocks):
                self.blocks.append(np.zeros((1 << self.BLOCK_BITS, self.width)))
        self.rows[user] = row
        view = self._view(row)
        view[:] = values
        return view

    def pop(self, user: str) -> bool:
        """Forget ``user``'s row; False if there was none."""
        row = self.rows.pop(user, None)
        if row is None:
            return False
        self.free.append(row)
        return True


class RatingFactorization:
    """Biased matrix factorisation of star ratings, learnt by regularised SGD.

    ``mu + b_u + b_i + p_u . q_i``, as River's ``reco.BiasedMF``, with changes
    that matter online: L2 regularisation (the documented River settings use
    none, and overfit users with few ratings); bias steps of
    ``max(lr_bias, 1 / (n + 1 + shrinkage))`` after ``n`` ratings, so a new
    user's or item's bias starts as the shrunk mean of its residuals rather
    than creeping towards it (users are shrunk harder than items: one
    person's few ratings say less than many people's ratings of one item);
    AdaGrad steps for the latent vectors (each coordinate's step shrinks with
    its own squared gradients: busy users and items settle, rare ones keep
    learning); and per-item arrays in numpy, so every item's predicted rating
    for a user is one matrix-vector product.

    The prediction is a **calibrated** sum: ``mu + w . x`` with ``x`` = (1,
    b_u, b_i, p_u . q_i, b_u / sqrt(n_u + 1), b_i / sqrt(n_i + 1),
    1 / sqrt(n_u + 1), 1 / sqrt(n_i + 1)), where ``w`` starts at (0, 1, 1, 1,
    0, ...) (the plain sum) and is fitted by recursive least squares on every
    rating before it is learnt. It learns how much to trust each term, and
    how much more once a user or item has many ratings (an estimate from
    three ratings is worth less than one from three hundred), plus the typical
    offset of new users and items. Eight weights in all, clipped to the range
    of ratings seen so far. Memory: ``2 n_factors + 2`` floats per user and
    per item.

    Parameters
    ----------
    n_factors
        Latent dimensions.
    lr_bias, lr_latent
        SGD step size of the biases; AdaGrad step size of the latent vectors.
    l2_bias, l2_latent
        L2 penalties.
    user_shrinkage, item_shrinkage
        Pseudo-counts of the shrunk running-mean start of user and item biases.
    seed
        Seeds the latent initialisation.

    Examples
    --------
    >>> mf = RatingFactorization(seed=1)
    >>> for _ in range(50):
    ...     mf.learn_one("ann", 0, 5.0); mf.learn_one("bob", 0, 4.0); mf.learn_one("bob", 1, 1.0)
    >>> mf.predict_one("ann", 0) > 4.8, mf.predict_one("ann", 1) < 3.0
    (True, True)
    """

    def __init__(
        self,
        n_factors: int = 10,
        lr_bias: float = 0.05,
        lr_latent: float = 0.1,
        l2_bias: float = 0.1,
        l2_latent: float = 0.1,
        user_shrinkage: float = 20.0,
        item_shrinkage: float = 5.0,
        seed: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.lr_bias = lr_bias
        self.lr_latent = lr_latent
        self.l2_bias = l2_bias
        self.l2_latent = l2_latent
        self.user_shrinkage = user_shrinkage
        self.item_shrinkage = item_shrinkage
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.mean = 0.0
        self.n = 0
        self.low = math.inf
        self.high = -math.inf
        self.user_bias: dict[str, float] = {}
        self.user_count: dict[str, int] = {}
        # Per user, one row: the vector, then AdaGrad's running sums of squared
        # gradients (:meth:`_user` returns both halves as views).
        self.user_rows = UserRows(2 * n_factors)
        self.item_bias = np.zeros(16)
        self.item_count = np.zeros(16)
        self.item_vec = np.zeros((16, n_factors))
        # AdaGrad's running sums of squared gradients per item
        self.item_grad = np.zeros((16, n_factors))
        # the calibration (recursive least squares): weights and inverse covariance
        self.weights = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
        self.inverse = np.eye(self.weights.shape[0]) / 100.0
        self._n_items = 0
        # When a list (an outbox's), every learn appends
        # (item, vector before, bias before, vector step, bias step).
        self.trace: list[tuple[int, np.ndarray, float, np.ndarray, float]] | None = None

    def set_item(self, item: int, vec: np.ndarray, bias: float, count: float) -> None:
        """Overwrite one item's vector, bias and rating count (a published model)."""
        self._item(item)
        self.item_vec[item] = vec
        self.item_bias[item] = bias
        self.item_count[item] = count

    def _item(self, item: int) -> None:
        if item >= self._n_items:
            self.item_bias = grown(self.item_bias, item + 1)
            self.item_count = grown(self.item_count, item + 1)
            self.item_vec = grown(self.item_vec, item + 1)
            self.item_grad = grown(self.item_grad, item + 1)
            new = item + 1 - self._n_items
            self.item_grad[self._n_items : item + 1] = GRAD_START
            self.item_vec[self._n_items : item + 1] = self._rng.normal(
                0.0, 0.1, (new, self.n_factors)
            )
            self._n_items = item + 1

    def _user(self, user: str) -> tuple[np.ndarray, np.ndarray]:
        """The user's vector and gradient sums (views of their row), made if new."""
        row = self.user_rows.get(user)
        if row is None:
            start = np.full(2 * self.n_factors, GRAD_START)
            start[: self.n_factors] = self._rng.normal(0.0, 0.1, self.n_factors)
            row = self.user_rows.add(user, start)
            self.user_bias[user] = 0.0
            self.user_count[user] = 0
        return row[: self.n_factors], row[self.n_factors :]

    def user_vector(self, user: str) -> np.ndarray | None:
        """The user's latent vector (a view), ``None`` for a user with no rating."""
        row = self.user_rows.get(user)
        return None if row is None else row[: self.n_factors]

    def __setstate__(self, state: dict[str, object]) -> None:
        # A pickle that holds one vector and one gradient array per user (dicts).
        vecs, grads = state.pop("user_vec", None), state.pop("user_grad", None)
        if isinstance(vecs, dict) and isinstance(grads, dict):
            rows = UserRows(2 * int(state["n_factors"]))  # type: ignore[call-overload]
            for user, vec in vecs.items():
                rows.add(user, np.concatenate([vec, grads[user]]))
            state["user_rows"] = rows
        self.__dict__.update(state)

    def _clip(self, value: float) -> float:
        if self.n == 0:
            return value
        return min(self.high, max(self.low, value))

    def forget(self, user: str) -> None:
        """Drop ``user``'s bias, count and vector (an evicted user starts afresh)."""
        self.user_bias.pop(user, None)
        self.user_count.pop(user, None)
        self.user_rows.pop(user)

    def _features(self, user: str, item: int) -> np.ndarray:
        """The calibration's inputs ``x`` for ``(user, item)`` (see the class docstring)."""
        bu = self.user_bias.get(user, 0.0)
        su = 1.0 / math.sqrt(self.user_count.get(user, 0) + 1.0)
        bi = latent = 0.0
        si = 1.0
        if item < self._n_items:
            bi = float(self.item_bias[item])
            si = 1.0 / math.sqrt(float(self.item_count[item]) + 1.0)
            vec = self.user_vector(user)
            if vec is not None:
                latent = float(vec @ self.item_vec[item])
        return np.array([1.0, bu, bi, latent, bu * su, bi * si, su, si])

    def predict_one(self, user: str, item: int) -> float:
        """Predicted rating (the running mean before the first rating)."""
        if self.n == 0:
            return self.mean
        return self._clip(self.mean + float(self.weights @ self._features(user, item)))

    def predict_all(self, user: str, n: int) -> np.ndarray:
        """Predicted ratings of items ``0..n-1`` for ``user`` (vectorised, unclipped)."""
        if self.n == 0:
            return np.full(n, self.mean)
        w = self.weights
        bu = self.user_bias.get(user, 0.0)
        su = 1.0 / math.sqrt(self.user_count.get(user, 0) + 1.0)
        m = min(n, self._n_items)
        bi = np.zeros(n)
        si = np.ones(n)
        latent = np.zeros(n)
        bi[:m] = self.item_bias[:m]
        si[:m] = 1.0 / np.sqrt(self.item_count[:m] + 1.0)
        vec = self.user_vector(user)
        if vec is not None:
            latent[:m] = self.item_vec[:m] @ vec
        user_part = w[0] + w[1] * bu + w[4] * bu * su + w[6] * su
        return self.mean + user_part + (w[2] + w[5] * si) * bi + w[3] * latent + w[7] * si

    def _calibrate(self, user: str, item: int, rating: float) -> None:
        """One recursive-least-squares step of the calibration weights (no forgetting)."""
        x = self._features(user, item)
        px = self.inverse @ x
        gain = px / (1.0 + float(x @ px))
        self.weights += gain * (rating - self.mean - float(self.weights @ x))
        self.inverse -= np.outer(gain, px)

    def learn_one(self, user: str, item: int, rating: float) -> None:
        """A calibration step, then one SGD step on ``(user, item, rating)``."""
        if self.n:
            self._calibrate(user, item, rating)
        self._item(item)
        p, acc_p = self._user(user)
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
        item_count = self.item_count[item]
        self.item_count[item] = item_count + 1
        # Step 1 / (n + shrinkage) while it is larger than lr_bias: a bias then
        # starts as the shrunk mean of its residuals instead of creeping towards it.
        lb_user = max(self.lr_bias, 1.0 / (count + 1 + self.user_shrinkage))
        lb_item = max(self.lr_bias, 1.0 / (item_count + 1 + self.item_shrinkage))
        bias_before = float(self.item_bias[item])
        self.user_bias[user] += lb_user * (err - self.l2_bias * self.user_bias[user])
        self.item_bias[item] += lb_item * (err - self.l2_bias * self.item_bias[item])
        grad_p = err * q - self.l2_latent * p
        grad_q = err * p - self.l2_latent * q
        acc_q = self.item_grad[item]
        acc_p += grad_p * grad_p
        acc_q += grad_q * grad_q
        p += self.lr_latent * grad_p / np.sqrt(acc_p)
        step = self.lr_latent * grad_q / np.sqrt(acc_q)
        if self.trace is not None:
            bias_step = float(self.item_bias[item]) - bias_before
            self.trace.append((item, q.copy(), bias_before, step, bias_step))
        q += step


class ImplicitFactorization:
    """Matrix factorisation of implicit feedback, learnt online with BPR.

    For a positive ``(user, item)`` it samples ``n_negatives`` items
    (uniformly, or half of them in proportion to recent popularity) and takes
    one Bayesian-personalised-ranking step per pair so that
    ``p_u . q_pos + b_pos`` exceeds ``p_u . q_neg + b_neg``. The step is
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
    popular_negatives
        Draw every second negative from the last 4,096 positives (so in
        proportion to recent popularity) instead of uniformly.
    seed
        Seeds initialisation and negative sampling.

    Examples
    --------
    >>> bpr = ImplicitFactorization(seed=0)
    >>> for step in range(300):
    ...     bpr.learn_one("ann", step % 2, 1.0, n_items=6)        # ann likes 0 and 1
    ...     bpr.learn_one("bob", 2 + step % 2, 1.0, n_items=6)    # bob likes 2 and 3
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
        popular_negatives: bool = True,
        seed: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.lr = lr
        self.l2 = l2
        self.n_negatives = n_negatives
        self.popular_negatives = popular_negatives
        self._recent: list[int] = []  # ring buffer of recent positive items
        self._recent_at = 0
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.user_vec = UserRows(n_factors)
        self.item_vec = np.zeros((16, n_factors))
        self.item_bias = np.zeros(16)
        self._n_items = 0
        self._buffer: list[float] = []
        self._cursor = 0
        # When a list (an outbox's), every learn appends
        # (item, vector before, bias before, vector step, bias step) for each row it moved.
        self.trace: list[tuple[int, np.ndarray, float, np.ndarray, float]] | None = None

    def set_item(self, item: int, vec: np.ndarray, bias: float) -> None:
        """Overwrite one item's vector and bias (a published model)."""
        self._item(item)
        self.item_vec[item] = vec
        self.item_bias[item] = bias

    def _item(self, item: int) -> None:
        if item >= self._n_items:
            self.item_vec = grown(self.item_vec, item + 1)
            self.item_bias = grown(self.item_bias, item + 1)
            new = item + 1 - self._n_items
            self.item_vec[self._n_items : item + 1] = self._rng.normal(
                0.0, 0.1, (new, self.n_factors)
            )
            self._n_items = item + 1

    def forget(self, user: str) -> None:
        """Drop ``user``'s vector (an evicted user starts afresh)."""
        self.user_vec.pop(user)

    def __setstate__(self, state: dict[str, object]) -> None:
        # A pickle that holds one array per user (a dict): the same vectors as rows.
        vecs = state.get("user_vec")
        if isinstance(vecs, dict):
            rows = UserRows(int(state["n_factors"]))  # type: ignore[call-overload]
            for user, vec in vecs.items():
                rows.add(user, vec)
            state["user_vec"] = rows
        self.__dict__.update(state)

    def scores(self, user: str, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Preference scores of items ``0..n-1`` (zeros for an unknown user).

        Written into ``out`` (length ``n``) when given: no temporary per call.
        """
        if out is None:
            out = np.empty(n)
        m = min(n, self._n_items)
        vec = self.user_vec.get(user)
        if vec is not None:
            np.matmul(self.item_vec[:m], vec, out=out[:m])
            out[:m] += self.item_bias[:m]
        else:
            out[:m] = self.item_bias[:m]
        out[m:] = 0.0
        return out

    def learn_one(self, user: str, item: int, weight: float, n_items: int) -> None:
        """BPR steps for ``item`` (positive if ``weight`` > 0, else negative)."""
        self._item(max(item, n_items - 1))
        p = self.user_vec.get(user)
        if p is None:
            p = self.user_vec.add(user, self._rng.normal(0.0, 0.1, self.n_factors))
        lr = self.lr * min(abs(weight), 2.0)
        sign = 1.0 if weight > 0 else -1.0
        shrink = 1.0 - lr * self.l2
        q_item = self.item_vec[item]
        bias = self.item_bias
        trace = self.trace
        before: dict[int, tuple[np.ndarray, float]] | None = None
        if trace is not None:
            before = {item: (q_item.copy(), float(bias[item]))}
        # Few small in-place numpy operations per pair: at 16 factors numpy's
        # per-call overhead, not arithmetic, is the cost.
        recent = self._recent
        # A weak signal (a click) gets one pair; purchases and ratings get n_negatives.
        for k in range(self.n_negatives if abs(weight) >= 0.5 else 1):
            # Alternate uniform negatives with popularity-proportional ones (items of
            # recent positives): the latter make "taste" learn what popularity misses.
            if self.popular_negatives and k % 2 == 1 and recent:
                other = recent[int(self._uniform() * len(recent))]
            else:
                other = int(self._uniform() * n_items)
            if other == item or other >= self._n_items:
                continue
            q_other = self.item_vec[other]
            if before is not None and other not in before:
                before[other] = (q_other.copy(), float(bias[other]))
            diff = q_item - q_other
            b_item, b_other = float(bias[item]), float(bias[other])
            x = sign * (float(p @ diff) + b_item - b_other)
            g = lr * sign / (1.0 + math.exp(min(x, 30.0)))  # lr * sign * sigmoid(-x)
            step = g * p  # g * p before p's own update (no copy of p needed)
            p *= shrink
            diff *= g  # a temporary of this pair: scaled in place, no second one
            p += diff
            q_item *= shrink
            q_item += step
            q_other *= shrink
            q_other -= step
            bias[item] = b_item * shrink + g
            bias[other] = b_other * shrink - g
        if before is not None and trace is not None:
            for row, (vec, b) in before.items():
                trace.append((row, vec, b, self.item_vec[row] - vec, float(bias[row]) - b))
        if weight > 0:
            if len(recent) < 4096:
                recent.append(item)
            else:
                recent[self._recent_at] = item
                self._recent_at = (self._recent_at + 1) % 4096

    def _uniform(self) -> float:
        """One U[0, 1) draw from a refilled buffer (a generator call per draw is slow)."""
        if self._cursor >= len(self._buffer):
            self._buffer = self._rng.random(4096).tolist()
            self._cursor = 0
        self._cursor += 1
        return self._buffer[self._cursor - 1]
