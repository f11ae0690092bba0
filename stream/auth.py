"""Access control of the HTTP edge: bearer tokens and a per-client rate limit.

Pure logic, no Faust and no aiohttp: the worker's views hand :meth:`Gate.check`
the path, the ``Authorization`` header values and the peer address, and answer
with the :class:`Decision`. Deny by default: every path but the open ones
(metrics and health, published on loopback only by docker-compose) needs a
token, unknown paths included, so a 401 tells nothing about which paths exist.

Tokens come from ``FEEDBACK_API_TOKENS`` as ``client=token`` pairs separated by
commas; the client name labels the rate limit and the logs, the token never
appears anywhere but the comparison, which looks up its SHA-256 digest (no
early exit on the first differing character to time).

>>> gate = Gate.from_setting("shop=" + "s" * 32, rate_per_second=1.0, burst=2)
>>> gate.check("/users/u1", ["Bearer " + "s" * 32], "10.0.0.1", now=0.0).status
200
>>> gate.check("/users/u1", [], "10.0.0.1", now=0.0).status
401
>>> gate.check("/metrics", [], "10.0.0.1", now=0.0).status
200
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "OPEN_PATHS",
    "UNAUTHORIZED_BODY",
    "Decision",
    "Gate",
    "TokenBucket",
    "parse_tokens",
]

#: Paths answered without a token (exact match): monitoring must work when auth breaks.
OPEN_PATHS: Final = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})
#: The whole body of a 401 and a 429: nothing from the request, nothing about any user.
UNAUTHORIZED_BODY: Final = b'{"error":"unauthorized"}'
TOO_MANY_BODY: Final = b'{"error":"too many requests"}'
MIN_TOKEN_CHARS: Final = 24  # 24 random base64 characters: 144 bits
# RFC 6750 b64token characters.
_TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_CLIENT: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BEARER: Final = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
# Bound on the clients with a bucket: failed attempts are keyed by peer address,
# which an attacker can vary; the least recently seen are dropped first.
MAX_BUCKETS: Final = 10_000


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(raw: str) -> dict[bytes, str]:
    """``client=token,client=token`` -> client name by SHA-256 digest of its token.

    Raises ``ValueError`` naming the first bad entry (never quoting a token).

    >>> sorted(parse_tokens("shop=" + "a" * 24 + ", crm=" + "b" * 24).values())
    ['crm', 'shop']
    >>> parse_tokens("shop=short")
    Traceback (most recent call last):
    ...
    ValueError: FEEDBACK_API_TOKENS: the token of 'shop' needs >= 24 characters of [A-Za-z0-9-._~+/]
    """
    clients: dict[bytes, str] = {}
    for n, entry in enumerate(e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not _CLIENT.fullmatch(name):
            raise ValueError(
                f"FEEDBACK_API_TOKENS: entry {n + 1} must be client=token "
                "(client: 1-64 of [A-Za-z0-9_.-])"
            )
        if len(token) < MIN_TOKEN_CHARS or not _TOKEN.fullmatch(token):
            raise ValueError(
                f"FEEDBACK_API_TOKENS: the token of {name!r} needs >= {MIN_TOKEN_CHARS} "
                "characters of [A-Za-z0-9-._~+/]"
            )
        digest = _digest(token)
        if digest in clients or name in clients.values():
            raise ValueError(f"FEEDBACK_API_TOKENS: client {name!r} or its token is repeated")
        clients[digest] = name
    return clients


@dataclass
class TokenBucket:
    """``rate`` requests per second on average, bursts of up to ``burst``.

    >>> bucket = TokenBucket(rate=1.0, burst=2)
    >>> [bucket.take(0.0) for _ in range(3)], bucket.take(1.0)
    ([True, True, False], True)
    """

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    at: float = field(default=-math.inf)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Spend one request; False when the bucket is empty."""
        if now > self.at:
            if math.isfinite(self.at):
                self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until the next request would pass."""
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


@dataclass(frozen=True)
class Decision:
    """What to answer: ``status`` 200 (go on, as ``client``), 401 or 429.

    ``body`` and ``headers`` are the whole answer for 401 and 429.
    """

    status: int
    client: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def allowed(self) -> bool:
        return self.status == 200


class Gate:
    """Authentication and rate limiting of one worker's HTTP endpoints.

    ``clients``: client name by token digest (:func:`parse_tokens`). Without
    any, the protected endpoints answer 401, unless ``open_without_tokens``
    (the worker sets it when it binds to loopback only, for development):
    then they are open, still rate-limited by peer address. Each authenticated
    client has its own bucket; failed attempts spend a bucket of their peer
    address, so guessing tokens is rate-limited too.
    """

    def __init__(
        self,
        clients: Mapping[bytes, str],
        rate_per_second: float,
        burst: int,
        open_without_tokens: bool = False,
    ) -> None:
        if not (rate_per_second > 0 and math.isfinite(rate_per_second)) or burst < 1:
            raise ValueError("the rate limit needs a rate > 0 and a burst >= 1")
        self.clients = dict(clients)
        self.rate = rate_per_second
        self.burst = burst
        self.open_without_tokens = open_without_tokens
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @classmethod
    def from_setting(
        cls, raw_tokens: str, rate_per_second: float, burst: int, open_without_tokens: bool = False
    ) -> Gate:
        return cls(parse_tokens(raw_tokens), rate_per_second, burst, open_without_tokens)

    @property
    def enabled(self) -> bool:
        return bool(self.clients)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def _limited(self, key: str, now: float) -> Decision | None:
        bucket = self._bucket(key)
        if bucket.take(now):
            return None
        return Decision(
            429,
            headers={"Retry-After": str(bucket.retry_after()), "Content-Type": "application/json"},
            body=TOO_MANY_BODY,
        )

    def authenticate(self, authorization: Sequence[str]) -> str | None:
        """The client presenting exactly one valid ``Bearer`` token, else ``None``."""
        if len(authorization) != 1:
            return None
        match = _BEARER.fullmatch(authorization[0].strip())
        if match is None:
            return None
        return self.clients.get(_digest(match.group(1)))

    def check(
        self, path: str, authorization: Sequence[str], peer: str | None, now: float
    ) -> Decision:
        """The decision for a request to ``path`` (without the query string)."""
        if path in OPEN_PATHS:
            return Decision(200)
        if not self.enabled and self.open_without_tokens:
            return self._limited(f"peer:{peer}", now) or Decision(200, client=None)
        client = self.authenticate(authorization)
        if client is None:
            limited = self._limited(f"peer:{peer}", now)
            if limited is not None:
                return limited
            return Decision(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="feedback-stream"',
                    "Content-Type": "application/json",
                },
                body=UNAUTHORIZED_BODY,
            )
        return self._limited(f"client:{client}", now) or Decision(200, client=client)
