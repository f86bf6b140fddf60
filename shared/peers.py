"""HTTP calls from one service to another (httpx), against the other's OpenAPI contract.

``peer(app, "survey")`` gives a client for the survey service. Calls on the service's own behalf
carry the internal token; calls made for a user (e.g. a province team reading contacts through
verification) should forward the user's own key instead, so the owning service applies its own
role and province checks. In the embedded mode the clients talk to the in-process apps directly
(ASGI transport), in production to ``SIPAS_<NAME>_URL``.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from shared.auth import INTERNAL_HEADER
from shared.errors import Unavailable
from shared.observability import CORRELATION_HEADER, current_correlation_id
from shared.settings import SERVICES, PlatformSettings


def build_peers(platform: PlatformSettings) -> dict[str, httpx.AsyncClient]:
    return {
        name: httpx.AsyncClient(
            base_url=platform.url_of(name),
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        for name in SERVICES
    }


def connect_in_process(apps: dict[str, FastAPI], platform: PlatformSettings) -> None:
    """Point every app's peers at the other in-process apps (embedded mode, tests)."""
    for app in apps.values():
        app.state.peers = {
            name: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=target),
                base_url=f"http://{name}",
                timeout=httpx.Timeout(30.0),
            )
            for name, target in apps.items()
        }


def peer(app: FastAPI, service: str) -> httpx.AsyncClient:
    return app.state.peers[service]


async def call(
    app: FastAPI, service: str, method: str, path: str, *, user_key: str | None = None, **kwargs
) -> httpx.Response:
    """Call a peer. With ``user_key``, the call is made with that user's API key (the peer checks
    the user's rights); without, with this platform's internal token. A peer that is down or
    answers 5xx becomes a 503 problem here, never a 500."""
    headers = dict(kwargs.pop("headers", None) or {})
    if user_key is not None:
        headers["X-API-Key"] = user_key
    else:
        headers[INTERNAL_HEADER] = app.state.settings.platform.internal_token
    cid = current_correlation_id()
    if cid:
        headers[CORRELATION_HEADER] = cid
    try:
        response = await peer(app, service).request(method, path, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        raise Unavailable(f"The {service} service cannot be reached: {type(exc).__name__}.") from exc
    if response.status_code >= 500:
        raise Unavailable(f"The {service} service answered {response.status_code}.")
    return response
