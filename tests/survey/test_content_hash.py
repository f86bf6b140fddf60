"""``content_hash`` (survey.forms) is the identity of pushed content: a stored response's answers
and a Vietnam Post batch's body. Its canonical bytes moved from ``json.dumps`` to orjson for
speed; digests stored before must keep matching, so the bytes must be the same."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random

from services.survey.forms import content_hash


def _old(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_CHARS = "aZ09 \"\\\n\t\x00\x01\x1f\x7f\u00e9\u1ea1\u2028\U0001f600/<>&'"


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 6 if depth < 3 else 3)
    if kind == 0:
        return rng.randint(-(10**18), 10**18)
    if kind == 1:
        return "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 12)))
    if kind == 2:
        return rng.choice([None, True, False, 0.5, -2.25, 123456.789, 3.0, 0.0])
    if kind == 3:
        return dt.datetime(2026, 8, 1, 9, 30, rng.randint(0, 59), rng.choice([0, 250000]),
                           tzinfo=rng.choice([None, dt.UTC, dt.timezone(dt.timedelta(hours=7))]))
    if kind in (4, 5):
        return {"".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 6))): _value(rng, depth + 1)
                for _ in range(rng.randint(0, 5))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def test_digests_are_those_json_dumps_gave():
    rng = random.Random(20261206)
    for _ in range(3000):
        value = _value(rng)
        assert content_hash(value) == _old(value), value
    answers = {"A1.1": 4, "B2.3": "na", "C3.1": None, "EXP": ["E1", "E3"], "P2": "Kinh doanh", "Q": "Hài lòng"}
    assert content_hash(answers) == _old(answers)
    assert content_hash(dict(reversed(answers.items()))) == content_hash(answers)  # key order does not count


def test_what_orjson_refuses_is_hashed_the_old_way():
    for value in ({"A1.1": 10**30}, {1: "a", 2: "b"}):
        assert content_hash(value) == _old(value)
