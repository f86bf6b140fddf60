"""The online channel (khảo sát trực tuyến): a respondent types the form code printed on the
paper form, or scans its QR code (a link carrying the code and a per-form token), gets the
questionnaire of the wave's methodology in Vietnamese and answers once.

Anonymous calls are rate-limited per client with a token bucket (``RateLimiter``), so a script
cannot walk the code space: with 2**25 serials per wave scattered by ``forms.scatter`` and a
check character, a guessed code is almost never a real form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey import forms as F
from services.survey.form_code import qr_payload, validate_form_code
from services.survey.models import form
from services.survey.versions import document, methodology
from services.survey.vnpost import record_responses
from shared.db import utcnow
from shared.errors import BadRequest, Conflict, Forbidden, InvalidState, NotFound, TooManyRequests, Unprocessable

# Where respondents answer; the QR code on a form is <ONLINE_BASE_URL>/<form code>?t=<token>.
ONLINE_BASE_URL = "https://khaosat.sipas.gov.vn/phieu"
# Anonymous calls per client: bursts of RATE_BURST, then RATE_PER_SECOND on average.
RATE_BURST = 30
RATE_PER_SECOND = 1.0


@dataclass
class RateLimiter:
    """Token buckets per client key, in process memory (one per service replica: a client
    spreading over N replicas gets N times the rate, which is still a bound)."""

    burst: float = RATE_BURST
    per_second: float = RATE_PER_SECOND
    max_clients: int = 100_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, client: str) -> float:
        """Take one token; 0 if allowed, else the seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if tokens >= 1:
            if len(self._buckets) >= self.max_clients and client not in self._buckets:
                self._buckets.clear()  # bounded memory; a reset only ever loosens the limit once
            self._buckets[client] = (tokens - 1, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1 - tokens) / self.per_second


def limit(app: FastAPI, client: str) -> None:
    limiter: RateLimiter = app.state.online_limiter
    wait = limiter.take(client)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise TooManyRequests(
            f"Too many requests from this client; try again in {seconds} s.", headers={"Retry-After": str(seconds)}
        )


def link_token(secret: str, form_code: str) -> str:
    """The per-form token of the QR link: an HMAC of the code, so nothing is stored and nobody
    without the platform secret can make one."""
    mac = hmac.new(secret.encode(), f"sipas-online:{form_code}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def qr(app: FastAPI, form_code: str) -> dict[str, str]:
    token = link_token(app.state.settings.platform.internal_token, form_code)
    return {"form_code": form_code, "url": qr_payload(form_code, ONLINE_BASE_URL, token=token),
            "typed_url": qr_payload(form_code, ONLINE_BASE_URL)}


async def open_form(app: FastAPI, session: AsyncSession, code: str, wave_code: str | None, token: str | None) -> tuple[dict, dict]:
    """The form behind a typed or scanned code, with every respondent-facing check."""
    check = validate_form_code(code)
    if check.status == "malformed":
        raise BadRequest(f"This is not a form code: {check.message}.", reason="malformed_code")
    if check.status == "bad_check_digit":
        raise BadRequest("The form code has a typing mistake (its check character does not match); please check it.",
                         reason="bad_check_digit")
    await F.lock_form(session, check.code)
    try:
        row = await F.get_form(session, check.code)
    except NotFound:
        raise NotFound("No form has this code; please check it.", reason="unknown_code") from None
    if token is not None:
        expected = link_token(app.state.settings.platform.internal_token, row["form_code"])
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise Forbidden("This link is not valid for this form.", reason="bad_token")
    wave_row = await F.get_wave(session, row["wave_id"])
    if wave_code is not None and wave_code != wave_row["code"]:
        raise Conflict(f"This form belongs to another survey wave ({wave_row['name']}).", reason="other_wave")
    if wave_row["status"] == "closed":
        raise InvalidState(f"The survey wave {wave_row['name']} is closed; answers are no longer accepted.",
                           reason="wave_closed")
    if row["status"] == "collected":
        raise InvalidState("This form has been answered already.", reason="already_answered")
    F.refuse_withdrawn(row)
    if row["status"] not in F.OPEN:
        raise InvalidState("This form is no longer in use.", reason="form_closed")
    return row, wave_row


async def questionnaire(app: FastAPI, session: AsyncSession, code: str, wave_code: str | None, token: str | None) -> dict[str, Any]:
    row, wave_row = await open_form(app, session, code, wave_code, token)
    if row["opened_at"] is None:
        # The respondent's clock starts at the first opening (time spent is measured server-side).
        await session.execute(update(form).where(form.c.id == row["id"], form.c.opened_at.is_(None)).values(opened_at=utcnow()))
    return {
        "form_code": row["form_code"],
        "wave": {"code": wave_row["code"], "name": wave_row["name"], "year": wave_row["year"]},
        "methodology_version": wave_row["methodology_version"],
        "language": "vi",
        "questionnaire": await document(session, wave_row["methodology_version"]),
    }


async def submit(
    app: FastAPI, session: AsyncSession, tables: dict, code: str, wave_code: str | None, token: str | None,
    answers: dict[str, Any], started_at: Any,
) -> dict[str, Any]:
    row, wave_row = await open_form(app, session, code, wave_code, token)
    method = await methodology(app, session, wave_row["methodology_version"])
    problems = method.validate_answers(answers)
    if problems:
        raise Unprocessable("Some answers are not valid for this questionnaire.", errors=[p.model_dump() for p in problems])
    now = utcnow()
    start = row["opened_at"] or started_at
    duration = max(0.0, (now - start).total_seconds()) if start is not None else None
    rec = {"answers": answers, "started_at": start, "duration_seconds": duration, "submitted_at": now}
    try:
        async with session.begin_nested():
            ids = await record_responses(
                session, tables, method, wave_row, [(row, rec, F.content_hash(answers))],
                channel="online", source="online", actor="online:respondent",
            )
    except IntegrityError:  # a concurrent second submission of the same form
        raise InvalidState("This form has been answered already.", reason="already_answered") from None
    return {"form_code": row["form_code"], "response_id": ids[0], "duration_seconds": duration, "submitted_at": now}
