"""Bearer tokens and the per-client rate limit of the HTTP edge (stream/auth.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.auth import (
    MAX_BUCKETS,
    OPEN_PATHS,
    TOO_MANY_BODY,
    UNAUTHORIZED_BODY,
    Gate,
    TokenBucket,
    parse_tokens,
)

SHOP = "s" * 20 + "Shop-_.~+/1234"
CRM = "c" * 30
TOKENS = f"shop={SHOP}, crm={CRM}"
PROTECTED = ["/users/u1", "/users/", "/recommendations/u1", "/segments", "/items/i1",
             "/items/i1/similar", "/nope", "/", ""]


def gate(rate: float = 1000.0, burst: int = 1000) -> Gate:
    return Gate.from_setting(TOKENS, rate_per_second=rate, burst=burst)


# -- tokens -------------------------------------------------------------------------


def test_tokens_parse_to_client_names_and_bad_entries_are_named() -> None:
    assert sorted(parse_tokens(TOKENS).values()) == ["crm", "shop"]
    assert parse_tokens("") == {}
    for raw, message in [
        ("shop", "entry 1 must be client=token"),
        (f"sh op={SHOP}", "entry 1"),
        ("shop=tooshort", "the token of 'shop'"),
        (f"shop={SHOP[:-1]}\u00e9", "the token of 'shop'"),
        (f"shop={SHOP},crm={SHOP}", "repeated"),
        (f"shop={SHOP},shop={CRM}", "repeated"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            parse_tokens(raw)
        assert SHOP not in str(err.value) and CRM not in str(err.value)


@pytest.mark.parametrize("path", PROTECTED)
def test_a_valid_token_is_let_through_as_its_client(path: str) -> None:
    assert gate().check(path, [f"Bearer {SHOP}"], "10.0.0.9", 0.0).client == "shop"
    assert gate().check(path, [f"bearer  {CRM} "], "10.0.0.9", 0.0).client == "crm"


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [[], [""], ["Bearer"], ["Bearer "], [SHOP], [f"Basic {SHOP}"], [f"Bearer {SHOP}x"],
     [f"Bearer {SHOP[:-1]}"], [f"Bearer {SHOP} {SHOP}"], [f"Bearer {SHOP}", f"Bearer {SHOP}"],
     [f"Bearer {SHOP.upper()}"], ["Bearer " + "s" * 40]],
)
def test_a_missing_or_bad_token_gets_401_with_no_data(path: str, authorization: list[str]) -> None:
    decision = gate().check(path, authorization, "10.0.0.9", 0.0)
    assert decision.status == 401 and decision.client is None
    assert decision.body == UNAUTHORIZED_BODY
    assert decision.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", sorted(OPEN_PATHS))
def test_metrics_and_health_are_open(path: str) -> None:
    assert gate().check(path, [], None, 0.0).status == 200
    assert gate().check(path + "/", [], None, 0.0).status == 401  # exact paths only


def test_without_tokens_every_protected_path_is_closed() -> None:
    g = Gate({}, rate_per_second=1.0, burst=2)
    assert g.check("/users/u1", [f"Bearer {SHOP}"], "10.0.0.1", 0.0).status == 401
    assert g.check("/metrics", [], "10.0.0.1", 0.0).status == 200


def test_without_tokens_on_loopback_every_path_is_open_but_rate_limited_by_peer() -> None:
    g = Gate({}, rate_per_second=1.0, burst=2, open_without_tokens=True)
    assert [g.check("/users/u1", [], "10.0.0.1", 0.0).status for _ in range(3)] == [200, 200, 429]
    assert g.check("/users/u1", [], "10.0.0.2", 0.0).status == 200


# -- rate limit ---------------------------------------------------------------------


def test_each_client_has_its_own_bucket_and_429_says_when_to_retry() -> None:
    g = gate(rate=0.5, burst=2)
    shop = [g.check("/users/u1", [f"Bearer {SHOP}"], "10.0.0.1", 0.0) for _ in range(3)]
    assert [d.status for d in shop] == [200, 200, 429]
    assert shop[2].headers["Retry-After"] == "2" and shop[2].body == TOO_MANY_BODY
    # Another client, even from the same address, is not held back by shop.
    assert g.check("/users/u1", [f"Bearer {CRM}"], "10.0.0.1", 0.0).status == 200
    assert g.check("/users/u1", [f"Bearer {SHOP}"], "10.0.0.1", 2.0).status == 200
    # Monitoring is never rate-limited.
    assert g.check("/metrics", [], "10.0.0.1", 0.0).status == 200


def test_guessing_tokens_is_rate_limited_by_peer_address() -> None:
    g = gate(rate=1.0, burst=3)
    statuses = [g.check("/users/u1", ["Bearer " + "x" * 30], "10.6.6.6", 0.0).status
                for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    assert g.check("/users/u1", [f"Bearer {SHOP}"], "10.6.6.6", 0.0).status == 200


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=4)
    assert sum(bucket.take(0.0) for _ in range(10)) == 4
    assert sum(bucket.take(1.0) for _ in range(10)) == 2  # 1 s at 2/s
    assert sum(bucket.take(100.0) for _ in range(10)) == 4  # never above the burst
    assert not bucket.take(99.0)  # a clock going back adds nothing


def test_buckets_are_bounded_when_peers_vary() -> None:
    g = gate(rate=1.0, burst=1)
    for n in range(MAX_BUCKETS + 50):
        g.check("/users/u1", [], f"peer-{n}", 0.0)
    assert len(g._buckets) == MAX_BUCKETS


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
def test_a_bad_rate_limit_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        Gate({}, rate, burst)


# -- fuzzed paths and headers ---------------------------------------------------------

paths = st.one_of(
    st.text(max_size=200),
    st.builds(lambda p, s: p + s, st.sampled_from(sorted(OPEN_PATHS) + PROTECTED),
              st.text(alphabet="/.%?#;:@\\ \x00\u202e", max_size=12)),
)
headers = st.lists(
    st.one_of(
        st.text(max_size=120),
        st.builds(lambda s, t: s + t, st.sampled_from(["Bearer ", "bearer ", "BEARER", "Basic "]),
                  st.text(max_size=80)),
        st.builds(lambda t, s: f"Bearer {t}{s}", st.sampled_from([SHOP, CRM]),
                  st.text(min_size=1, max_size=5).filter(lambda s: s.strip() != "")),
    ),
    max_size=3,
)


@settings(max_examples=600, deadline=None)
@given(path=paths, authorization=headers, peer=st.one_of(st.none(), st.text(max_size=40)))
def test_fuzz_no_path_or_header_gets_past_without_a_valid_token(
    path: str, authorization: list[str], peer: str | None
) -> None:
    decision = gate().check(path, authorization, peer, 0.0)
    if path in OPEN_PATHS:
        assert decision.status == 200 and decision.client is None
    else:
        assert decision.status == 401, (path, authorization)
        assert decision.body == UNAUTHORIZED_BODY


@settings(max_examples=300, deadline=None)
@given(path=paths, token=st.sampled_from([SHOP, CRM]), pad=st.sampled_from(["", " ", "\t"]))
def test_fuzz_a_valid_token_passes_on_any_path(path: str, token: str, pad: str) -> None:
    decision = gate().check(path, [f"{pad}Bearer {token}{pad}"], "10.0.0.1", 0.0)
    assert decision.status == 200
    assert decision.client == (None if path in OPEN_PATHS else {SHOP: "shop", CRM: "crm"}[token])


@settings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=200))
def test_fuzz_token_settings_parse_or_fail_with_a_named_value_error(raw: str) -> None:
    try:
        clients = parse_tokens(raw)
    except ValueError as exc:
        assert str(exc).startswith("FEEDBACK_API_TOKENS: ")
    else:
        assert all(len(d) == 32 for d in clients)


# -- exact answers and limits ---------------------------------------------------------


def test_setting_errors_say_what_a_valid_entry_looks_like() -> None:
    with pytest.raises(ValueError) as err:
        parse_tokens(f"shop={SHOP}, sh op={CRM}")
    assert str(err.value) == (
        "FEEDBACK_API_TOKENS: entry 2 must be client=token (client: 1-64 of [A-Za-z0-9_.-])"
    )
    with pytest.raises(ValueError) as err:
        parse_tokens("crm=" + "c" * 23)
    assert str(err.value) == (
        "FEEDBACK_API_TOKENS: the token of 'crm' needs >= 24 characters of [A-Za-z0-9-._~+/]"
    )
    with pytest.raises(ValueError) as err:
        Gate({}, 0.0, 1)
    assert str(err.value) == "the rate limit needs a rate > 0 and a burst >= 1"


def test_tokens_of_exactly_24_characters_padding_and_empty_entries_are_accepted() -> None:
    short, padded = "t" * 24, "p" * 24 + "=="
    clients = parse_tokens(f" , shop={short},, crm={padded} ,")
    assert sorted(clients.values()) == ["crm", "shop"]
    g = Gate(clients, rate_per_second=1.0, burst=5)
    assert g.check("/segments", [f"Bearer {short}"], "p", 0.0).client == "shop"
    assert g.check("/segments", [f"Bearer {padded}"], "p", 0.0).client == "crm"
    assert g.check("/segments", ["Bearer " + "p" * 24], "p", 0.0).status == 401


def test_401_and_429_answer_with_json_and_nothing_else() -> None:
    g = gate(rate=1.0, burst=1)
    denied = g.check("/users/u1", [], "10.0.0.1", 0.0)
    assert (denied.status, dict(denied.headers), denied.body) == (401, {
        "WWW-Authenticate": 'Bearer realm="feedback-stream"',
        "Content-Type": "application/json",
    }, UNAUTHORIZED_BODY)
    limited = g.check("/users/u1", [], "10.0.0.1", 0.5)
    assert (limited.status, dict(limited.headers), limited.body) == (429, {
        "Retry-After": "1", "Content-Type": "application/json",
    }, TOO_MANY_BODY)


def test_from_setting_is_closed_without_tokens_unless_told_otherwise() -> None:
    closed = Gate.from_setting("", rate_per_second=1.0, burst=5)
    assert closed.check("/users/u1", [], "127.0.0.1", 0.0).status == 401
    opened = Gate.from_setting("", rate_per_second=1.0, burst=5, open_without_tokens=True)
    assert opened.check("/users/u1", [], "127.0.0.1", 0.0).status == 200


def test_a_new_peer_past_the_bucket_bound_is_still_limited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.auth

    monkeypatch.setattr(stream.auth, "MAX_BUCKETS", 3)
    g = gate(rate=0.001, burst=1)
    for peer in ("a", "b", "c"):
        assert g.check("/users/u1", [], peer, 0.0).status == 401
    assert g.check("/users/u1", [], "a", 0.0).status == 429  # a: seen again, kept
    # d takes the place of the least recently seen (b), not its own.
    assert [g.check("/users/u1", [], "d", 0.0).status for _ in range(2)] == [401, 429]
    assert list(g._buckets) == ["peer:c", "peer:a", "peer:d"]
