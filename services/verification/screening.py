"""Screening rules (methodology §6) and the back-check draw, as pure functions.

Rules are parameters, not code paths: every finding carries the rule's name, what it decided
(``reject`` or ``flag``) and the parameter values it used, and that record is stored with the
decision. The service layer (``service.py``) feeds these functions and acts on what they say.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.methodology import Methodology, Validity

# Reject rules first, in the order they are reported; then the flags.
REJECT_RULES = ("not_in_sample", "voided", "duplicate", "out_of_range", "min_answered_share")
FLAG_RULES = ("straight_lining", "too_fast_online")
PARAMETER_NAMES = tuple(Validity.model_fields)


def effective_parameters(methodology: Methodology, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The methodology's validity parameters with the wave's overrides on top."""
    values = methodology.validity.model_dump()
    values.update({k: v for k, v in (overrides or {}).items() if k in values and v is not None})
    return values


def finding(rule: str, outcome: str, parameters: dict[str, Any], **detail: Any) -> dict[str, Any]:
    return {"rule": rule, "outcome": outcome, "parameters": parameters, "detail": detail or None}


def screen(
    methodology: Methodology,
    parameters: Mapping[str, Any],
    answers: Mapping[str, Any],
    *,
    channel: str,
    duration_seconds: float | None,
    in_sample: bool,
    unit_replaced: bool = False,
    voided: bool = False,
    duplicate_of: str | None = None,
) -> list[dict[str, Any]]:
    """Run every rule on one response; return the findings (empty = clean).

    ``in_sample``/``unit_replaced``/``voided``/``duplicate_of`` are facts the caller looked up
    (the sample copy, the form's state); the rest is computed from the answers.
    """
    found: list[dict[str, Any]] = []
    if not in_sample:
        found.append(finding("not_in_sample", "reject", {}, unit_replaced=unit_replaced))
    if voided:
        found.append(finding("voided", "reject", {}))
    if duplicate_of is not None:
        found.append(finding("duplicate", "reject", {}, accepted_response_id=duplicate_of))
    errors = methodology.validate_answers(answers)
    if errors:
        found.append(
            finding("out_of_range", "reject", {}, errors=[e.model_dump() for e in errors[:50]], count=len(errors))
        )
    share = methodology.answered_share(answers)
    min_share = float(parameters["min_answered_share"])
    if share < min_share:
        found.append(finding("min_answered_share", "reject", {"min_answered_share": min_share}, answered_share=round(share, 4)))
    if parameters["straight_lining_flag"] and _straight_lined(methodology, answers, min_share):
        found.append(finding("straight_lining", "flag", {"straight_lining_flag": True}))
    min_seconds = int(parameters["min_online_seconds"])
    if channel == "online" and duration_seconds is not None and duration_seconds < min_seconds:
        found.append(
            finding("too_fast_online", "flag", {"min_online_seconds": min_seconds}, duration_seconds=duration_seconds)
        )
    return found


def _straight_lined(methodology: Methodology, answers: Mapping[str, Any], min_share: float) -> bool:
    # ``is_straight_lined`` reads the share from the document; use the wave's value instead.
    if min_share != methodology.validity.min_answered_share:
        validity = methodology.validity.model_copy(update={"min_answered_share": min_share})
        methodology = methodology.model_copy(update={"validity": validity})
    return methodology.is_straight_lined(answers)


def outcome_of(findings: list[dict[str, Any]]) -> str:
    """``rejected`` if any rule rejects, ``has_issues`` if any flags, else ``accepted``."""
    if any(f["outcome"] == "reject" for f in findings):
        return "rejected"
    if findings:
        return "has_issues"
    return "accepted"


def reasons_of(findings: list[dict[str, Any]]) -> list[str]:
    return [f["rule"] for f in findings]


def fingerprint(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a response's content (canonical JSON), to tell a redelivery from a conflict."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------------- back-check draw


def stream(seed: int, key: str) -> np.random.Generator:
    """The random stream of one draw key: NumPy PCG64 seeded with ``int(sha256(f"{seed}:{key}"))``,
    the same construction as sampling's draws, so a stream depends only on the seed and its key
    (SHA-256 rather than ``hash()``, which is salted per process)."""
    entropy = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest(), "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def quota(n: int, share: float, minimum: int) -> int:
    """Forms to back-check among an enumerator's ``n``: the share rounded up, at least
    ``minimum``, at most all of them."""
    return min(n, max(minimum, math.ceil(share * n - 1e-9)))


def draw_back_check(
    seed: int, wave_id: str, province_code: str, forms_by_enumerator: Mapping[str, list[str]], share: float, minimum: int
) -> dict[str, list[str]]:
    """Draw the back-check list of one province: for each enumerator (key ``""`` for forms with
    none), ``quota`` forms chosen by a permutation of the sorted form codes from the stream
    ``[wave, province, enumerator]``. The result depends only on the seed and the forms."""
    chosen: dict[str, list[str]] = {}
    for enumerator in sorted(forms_by_enumerator):
        codes = sorted(forms_by_enumerator[enumerator])
        k = quota(len(codes), share, minimum)
        if k == 0:
            continue
        rng = stream(seed, json.dumps([wave_id, province_code, enumerator]))
        picks = rng.permutation(len(codes))[:k]
        chosen[enumerator] = sorted(codes[i] for i in picks)
    return chosen


def forms_hash(forms_by_enumerator: Mapping[str, list[str]]) -> str:
    """Fingerprint of the population a draw was made from (to re-draw it elsewhere)."""
    lines = sorted(f"{e}\t{c}" for e, codes in forms_by_enumerator.items() for c in codes)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
