"""Fuzzing: the whole HTTP API against its own OpenAPI document, and properties of the parsers.

- schemathesis generates requests for every operation of `/openapi.json` and sends them to the
  in-process WSGI app, once with a user token and once with an API key: no 5xx, and every
  answer (status, content type, headers, body) is one the document describes. Bounded to a
  few dozen cases per operation (FUZZ_MODES): ~20 s per database. It runs on both: PostgreSQL
  refuses what SQLite lets through (a string too long for its column, a text where an integer
  belongs, a NUL), and those would be 500s only there.
- hypothesis properties: cursors round-trip and garbage is a 4xx problem, never 500; JWT claims are
  accepted only in the documented shape; moderation policy overrides merge predictably.

Repeatable: every run sends the same cases (CI always). Hypothesis is derandomized (its choices
are seeded from each test's code, so they change only with the code or the pinned Hypothesis) and
keeps no example database. The requests that once failed are in tests/web/fuzz_examples.json and are
sent every time, first. To explore new cases on your machine, set PARLEY_FUZZ_EXPLORE=1 (ignored
when CI is set): each run then draws fresh ones; record what it finds in fuzz_examples.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import positive_data_acceptance

from core.ids import utcnow
from domain.errors import Invalid, Unauthorized
from domain.pagination import decode_cursor, encode_cursor
from moderation import parse_policy_overrides, policy_for
from moderation.policy import ACTIONS, CONVERSATION_TYPES, DEFAULT_POLICIES, LABELS
from tests.conftest import JWT_SECRET, ROOT, Stack
from tests.factories import Api, uid

# Cases per operation: valid inputs (answered as documented), then invalid ones (refused 4xx).
FUZZ_MODES = ((GenerationMode.POSITIVE, 14), (GenerationMode.NEGATIVE, 7))
EXPLORE = os.environ.get("PARLEY_FUZZ_EXPLORE") == "1" and not os.environ.get("CI")
REPEATABLE = settings(derandomize=not EXPLORE, database=None)
QUICK = settings(
    REPEATABLE,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
RECORDED: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fuzz_examples.json").read_text()
)["cases"]


# --- the API against its document -------------------------------------------------------------


@pytest.fixture
def credentials(stack: Stack) -> dict[str, str]:
    api = Api(stack)
    return {"user": api.token(uid("fuzz")), "key": api.api_key("fuzz")}


def test_every_operation_answers_as_documented_and_never_5xx(
    stack: Stack, credentials: dict[str, str]
) -> None:
    """Driven from Python rather than schemathesis's pytest plugin, whose lazy loader does not
    work with pytest 9.2; every operation still gets its own hypothesis run."""
    config = schemathesis.Config.from_dict(
        {
            "generation": {"database": "none"},
            # Cross-field rules (`@validates_schema`: "either cursor or after_seq", "at least one
            # of subject, status, metadata") and path parameter rules (a reaction is one emoji:
            # 422; no id holds a control character: 400) are beyond what the document's schemas
            # state, so input valid by the document may still be refused with a problem; 5xx
            # never.
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422", "429"]
                }
            },
        }
    )
    api_schema = schemathesis.openapi.from_wsgi("/openapi.json", stack.app, config=config)
    failures: list[str] = []
    operations: set[str] = set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations.add(operation.label)
        send = _call(operation, list(credentials.values()))
        for mode, examples in FUZZ_MODES:
            try:
                _fuzz(operation, mode, examples, send)
            except Unsatisfiable:
                continue  # no parameters or body to make invalid: nothing negative to send
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis groups its findings
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert len(operations) >= 40, f"only {len(operations)} operations in /openapi.json"
    stale = {r["operation"] for r in RECORDED} - operations
    assert not stale, f"fuzz_examples.json names operations the document lacks: {stale}"
    assert not failures, "\n\n".join(failures)


# Known gaps between an operation and its document, each with its reason; their other checks run.
KNOWN_GAPS: dict[str, tuple[str, list[Any]]] = {
    # No worker runs here, so readiness is a documented 503, not a server fault.
    "GET /readyz": ("no worker in this test", [not_a_server_error, positive_data_acceptance]),
    "POST /v1/attachments": (
        "generated bytes are no allowed file type and the conversation is made up: a valid"
        " form is still refused (415/404), as documented",
        [positive_data_acceptance],
    ),
}


Send = Callable[[Any, "dict[str, Any] | None"], None]


def _fuzz(operation: Any, mode: GenerationMode, examples: int, send: Send) -> None:
    """One hypothesis run for `operation`: the recorded cases first (positive mode), then
    `examples` generated ones, each handed to `send` with its record (None when generated)."""

    def answers_as_documented(case: Any, recorded: dict[str, Any] | None) -> None:
        send(case, recorded)

    if mode is GenerationMode.POSITIVE:
        for recorded in RECORDED:
            if recorded["operation"] == operation.label:
                case = operation.Case(**recorded["case"])
                answers_as_documented = example(case=case, recorded=recorded)(answers_as_documented)
    test = given(case=operation.as_strategy(generation_mode=mode), recorded=st.none())(
        answers_as_documented
    )
    settings(
        REPEATABLE,
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )(test)()


def _call(operation: Any, tokens: list[str]) -> Send:
    """Send a case with each token and check the answer against the document."""
    excluded = KNOWN_GAPS.get(operation.label, ("", []))[1]

    def send(case: Any, recorded: dict[str, Any] | None) -> None:
        for token in tokens:
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded
            )
            if recorded is not None and recorded.get("expect") == "4xx":
                assert 400 <= response.status_code < 500, (
                    f"recorded case ({recorded['found']}): {response.status_code} "
                    f"{response.text[:300]}"
                )

    return send


def cases_digest(app: Flask, examples: int) -> str:
    """A hash of the cases the fuzz test sends (recorded, then the first `examples` generated
    per operation and mode), without sending them."""
    digest = hashlib.sha256()
    for result in schemathesis.openapi.from_wsgi("/openapi.json", app).get_all_operations():
        operation = result.ok()
        for mode, _ in FUZZ_MODES:
            drawn: list[Any] = []

            def record(
                case: Any, recorded: dict[str, Any] | None, drawn: list[Any] = drawn
            ) -> None:
                body = None if isinstance(case.body, NotSet) else case.body
                drawn.append((case.path_parameters, case.query, dict(case.headers), body))

            try:
                _fuzz(operation, mode, examples, record)
            except Unsatisfiable:
                drawn.append("unsatisfiable")
            digest.update(repr((operation.label, mode.value, drawn)).encode())
    return digest.hexdigest()


DIGEST_SCRIPT = "from web import create_app; from tests.web.test_fuzz import cases_digest; " + (
    "print(cases_digest(create_app(), 2))"
)


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_every_process_sends_the_same_fuzz_cases(stack: Stack) -> None:
    """CI must be repeatable: string hashing is salted per process (PYTHONHASHSEED), so any set
    iterated on the way to a case would change the cases from run to run (the document's path
    parameters once came from a set: two-parameter operations differed)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", DIGEST_SCRIPT],
            cwd=ROOT,
            env={**stack.env, "PYTHONHASHSEED": salt},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for salt in ("1", "2", "3")
    ]
    digests = set()
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-3000:]
        digests.add(out.split()[-1])
    assert len(digests) == 1, digests


# --- cursors ----------------------------------------------------------------------------------


def _json(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    )


json_values = _json(st.text())
# What this server puts in its cursors: values read from a database, so text without NUL
# (hypothesis's text never holds an unpaired surrogate).
stored_values = _json(st.text(st.characters(exclude_characters="\x00")))


@given(st.dictionaries(st.text(min_size=1, max_size=5), stored_values, min_size=1, max_size=4))
@QUICK
def test_a_cursor_round_trips_its_values(values: dict[str, Any]) -> None:
    keys = sorted(values)
    assert decode_cursor(encode_cursor(values), keys) == [values[k] for k in keys]


@given(st.text(max_size=20), st.sampled_from(["\x00", "\ud800", "\udfff"]), st.text(max_size=20))
@QUICK
def test_a_cursor_holding_text_no_database_can_store_is_a_422_invalid(
    head: str, bad: str, tail: str
) -> None:
    """Well-formed and well-typed, but forged: the text would be a 500 at SQL (PostgreSQL)."""
    cursor = encode_cursor({"t": "2026-01-01T00:00:00+00:00", "id": head + bad + tail})
    with pytest.raises(Invalid):
        decode_cursor(cursor, {"t": datetime, "id": str})


@given(st.text(max_size=600))
@QUICK
def test_any_string_decodes_to_values_or_a_422_invalid(garbage: str) -> None:
    try:
        decode_cursor(garbage, ("d", "s"))
    except Invalid as exc:
        assert exc.status == 422 and exc.errors == {"cursor": ["invalid cursor"]}


@pytest.fixture
def paged(api: Api) -> tuple[Api, str, str]:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    return api, a, cid


# Timestamps too, so that a forged cursor can pass the type checks and reach SQL.
timestamps = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
forged_cursors = st.dictionaries(
    st.sampled_from(["d", "s", "t", "id"]), json_values | timestamps, min_size=0, max_size=4
).map(encode_cursor)


@given(cursor=st.text(max_size=500) | forged_cursors)
@QUICK
def test_garbage_and_forged_cursors_are_4xx_never_500(
    paged: tuple[Api, str, str], cursor: str
) -> None:
    """Well-formed cursors carrying the wrong types are the dangerous ones: they decode fine and
    would reach SQL (PostgreSQL refuses a text seq where SQLite shrugs)."""
    api, user, cid = paged
    for path in ("/v1/conversations", f"/v1/conversations/{cid}/messages"):
        resp = api.get(path, user=user, query_string={"cursor": cursor})
        # a control character (NUL among them) is in no id or cursor: the URL's 400 (web/http.py)
        expected = (400,) if any(unicodedata.category(c) == "Cc" for c in cursor) else (200, 422)
        assert resp.status_code in expected, (path, cursor, resp.get_json())
        if resp.status_code != 200:
            assert resp.content_type == "application/problem+json"


# --- JWT claims -------------------------------------------------------------------------------

claim_values = st.none() | st.integers() | st.text(max_size=20) | st.lists(st.text(max_size=8))


@given(
    sub=claim_values,
    roles=claim_values,
    extra=st.dictionaries(st.text(max_size=8), claim_values, max_size=3),
    exp_offset=st.integers(min_value=-3600, max_value=3600),
)
@QUICK
def test_tokens_are_accepted_only_in_the_documented_shape(
    stack: Stack, sub: Any, roles: Any, extra: dict[str, Any], exp_offset: int
) -> None:
    """Whatever the claims, decoding answers claims with a string sub and a list of string roles,
    or Unauthorized; nothing else escapes."""
    payload: dict[str, Any] = {**extra, "exp": utcnow() + timedelta(seconds=exp_offset)}
    payload.pop("nbf", None)
    payload.pop("iat", None)
    payload.pop("aud", None)
    payload.pop("iss", None)
    if sub is not None:
        payload["sub"] = sub
    if roles is not None:
        payload["roles"] = roles
    try:
        token = jwt.encode(payload, JWT_SECRET, algorithm="HS256")
    except TypeError:
        return  # not encodable: no client could send it
    with stack.app.app_context():
        from web.auth import codec

        try:
            claims = codec().decode(token)
        except Unauthorized:
            return
    assert isinstance(claims["sub"], str) and 0 < len(claims["sub"]) <= 128
    assert isinstance(claims.get("roles", []), list)
    assert all(isinstance(r, str) for r in claims.get("roles", []))
    assert exp_offset > -stack.svc.settings.jwt_leeway_s - 1


@given(st.binary(max_size=200) | st.text(max_size=200))
@QUICK
def test_garbage_tokens_are_unauthorized(stack: Stack, garbage: bytes | str) -> None:
    token = garbage.decode("latin-1") if isinstance(garbage, bytes) else garbage
    with stack.app.app_context():
        from web.auth import codec

        with pytest.raises(Unauthorized):
            codec().decode(token)


# --- moderation policy merging ----------------------------------------------------------------

overrides_strategy = st.dictionaries(
    st.sampled_from(CONVERSATION_TYPES),
    st.dictionaries(st.sampled_from(LABELS), st.sampled_from(ACTIONS), max_size=4),
    max_size=3,
)


@given(overrides=overrides_strategy, conv_type=st.sampled_from([*CONVERSATION_TYPES, "other"]))
@QUICK
def test_overrides_replace_only_the_labels_they_name(
    overrides: dict[str, dict[str, str]], conv_type: str
) -> None:
    parsed = parse_policy_overrides(json.dumps(overrides))
    assert parsed == overrides
    known = conv_type if conv_type in DEFAULT_POLICIES else "direct"
    policy = policy_for(conv_type, parsed)
    for label in LABELS:
        expected = overrides.get(known, {}).get(label, DEFAULT_POLICIES[known].action_for(label))
        assert policy.action_for(label) == expected


@given(st.text(max_size=200) | st.builds(json.dumps, json_values))
@QUICK
def test_any_policy_text_parses_or_fails_with_a_readable_value_error(raw: str) -> None:
    try:
        parsed = parse_policy_overrides(raw)
    except ValueError as exc:
        assert str(exc)
        return
    for conv_type, mapping in parsed.items():
        assert conv_type in CONVERSATION_TYPES
        assert set(mapping) <= set(LABELS) and set(mapping.values()) <= set(ACTIONS)
