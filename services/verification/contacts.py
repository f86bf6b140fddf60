"""Contact details for back-check teams, read from sampling for the caller.

Contacts (names, phones, addresses) live only in the sampling service. A provincial team reading
its back-check list here gets them by verification calling sampling's
``GET /v1/waves/{wave_id}/contacts?unit_id=...`` **with the team's own API key**
(``shared.peers.call(..., user_key=...)``), so sampling applies its own role and province checks
and audits the access; verification never stores a contact.

Only forms still waiting for an outcome get contacts, and only what a team needs to reach the
respondent (name, phone, address): nothing more. Whenever sampling does not give them (the
caller's role may not read contacts there, sampling does not serve the endpoint, it is down),
the list is still served, without contacts, and ``contacts_unavailable`` says why.

Expected answer (sampling's ``ContactPage``)::

    {"items": [{"unit_id": "…", "province_code": "01", "commune_code": "00004",
                "full_name": "…", "phone": "…", "email": "…", "address": "…"}],
     "not_available": ["<unit ids it does not give>"]}
"""

from __future__ import annotations

from fastapi import FastAPI

from services.verification.schemas import BackCheckItem
from shared.errors import Problem
from shared.peers import call

CONTACT_FIELDS = ("full_name", "phone", "address")
BATCH = 100  # unit ids per call (keeps the query string short)


async def attach(app: FastAPI, wave_id: str, items: list[BackCheckItem], user_key: str | None) -> str | None:
    """Fill ``contact`` on the pending items; return why contacts are missing, or None."""
    units = sorted({i.unit_id for i in items if i.outcome is None and i.unit_id})
    if not units:
        return None
    if user_key is None:
        return "no user key to forward to sampling (contacts are read with the caller's own rights)"
    found: dict[str, dict] = {}
    for start in range(0, len(units), BATCH):
        batch = units[start:start + BATCH]
        try:
            response = await call(app, "sampling", "GET", f"/v1/waves/{wave_id}/contacts",
                                  user_key=user_key, params=[("unit_id", u) for u in batch])
        except Problem as exc:
            return f"the sampling service is unavailable ({exc.detail or exc.title})"
        if response.status_code in (401, 403):
            return "this key may not read contacts in the sampling service"
        if response.status_code in (404, 405):
            return "the sampling service does not serve contacts for this wave"
        if response.status_code != 200:
            return f"the sampling service answered {response.status_code} for contacts"
        try:
            rows = response.json().get("items") or []
        except (ValueError, AttributeError):
            return "the sampling service answered contacts in an unexpected shape"
        for row in rows:
            if isinstance(row, dict) and row.get("unit_id") in batch:
                found[row["unit_id"]] = {k: row.get(k) for k in CONTACT_FIELDS}
    for item in items:
        if item.outcome is None and item.unit_id in found:
            item.contact = found[item.unit_id]
    return None
