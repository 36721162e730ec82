"""The adapter protocol's messages (primitives/wire.py): one typed message per request,
under its kind, parsed once; anything else is a 400 before the department reads a row."""

from __future__ import annotations

import pytest

from tongban.primitives.errors import BadRequest
from tongban.primitives.wire import (
    MAX_BATCH,
    MESSAGE_KINDS,
    BatchCall,
    PredicateCall,
    StatisticCall,
    parse_message,
)

ID = "110105199005171233"


@pytest.mark.parametrize(
    "message",
    [
        PredicateCall("registered_in_household", ID, {"district": "110105"}),
        PredicateCall("guardian_of", ID, {}, "110105201505170012"),
        BatchCall("currently_married", {}, (ID, ID)),
        StatisticCall("st-1", "births_by_district_year", {"year": "2020"}, {"n": "ab"}, 3),
        StatisticCall("st-2", "bench_counts", {}, {"n": "ab"}, 2, {"threshold": 10}),
    ],
)
def test_every_message_round_trips_under_its_kind(message: object) -> None:
    assert set(MESSAGE_KINDS) == {"call", "batch", "statistic"}
    payload = {"iss": "gw", "jti": "x" * 22, message.kind: message.to_json()}  # type: ignore[attr-defined]
    assert parse_message(payload) == message


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({}, "request: expected exactly one of call, batch, statistic"),
        (
            {"call": PredicateCall("p", ID).to_json(), "batch": {}},
            "request: expected exactly one of call, batch, statistic",
        ),
        ({"batch": []}, "batch: expected an object"),
        (
            {"batch": {"predicate": "p", "subjects": []}},
            f"batch.subjects: expected 1..{MAX_BATCH} ID numbers",
        ),
        (
            {"batch": {"predicate": "p", "subjects": [ID] * (MAX_BATCH + 1)}},
            f"batch.subjects: expected 1..{MAX_BATCH} ID numbers",
        ),
        (
            {"batch": {"predicate": "p", "subjects": [1]}},
            "batch.subjects: expected ID number strings",
        ),
        (
            {"batch": {"predicate": "p", "subjects": [ID], "params": {"a": 1}}},
            "batch.params: expected an object of string values",
        ),
        (
            {"batch": {"predicate": "p", "subjects": [ID], "extra": 1}},
            "batch: unexpected field 'extra'",
        ),
        (
            {"batch": {"predicate": "", "subjects": [ID]}},
            "batch.predicate: expected a non-empty string",
        ),
        ({"statistic": {"job": "", "name": "x"}}, "statistic.job: expected a job id"),
        ({"statistic": {"job": "st-1", "secret": 1}}, "statistic: unexpected field 'secret'"),
    ],
)
def test_a_malformed_message_is_a_bad_request_that_names_no_subject(
    payload: dict[str, object], detail: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_message(payload)
    assert str(caught.value) == detail
    assert ID not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"note": "n", "from_size": -1, "consistency_path": []}, "from_size: expected at least 0"),
        ({"note": "n", "from_size": 1, "consistency_path": ["AB" * 32]}, "consistency_path[0]: "),
        ({"note": 5, "from_size": 0, "consistency_path": []}, "note: expected a string"),
        ({"note": "n", "from_size": 0}, "consistency_path: required"),
    ],
)
def test_a_malformed_cosign_request_names_its_field(body: dict[str, object], detail: str) -> None:
    from tongban.primitives.bodies import parse_body
    from tongban.primitives.wire import CosignRequest

    with pytest.raises(BadRequest) as caught:
        parse_body(CosignRequest, body)
    assert str(caught.value).startswith(detail)
    ok = parse_body(CosignRequest, {"note": "n", "from_size": 2, "consistency_path": ["ab" * 32]})
    assert ok.proof() == [bytes.fromhex("ab" * 32)]
