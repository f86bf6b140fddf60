"""The stored-body fast path (``StoredBodyFastPath``): a published release's document and
metadata answered from the cache without the router must be exactly what the routed handler
answers, and every case it does not handle must still get the routed answer."""

from __future__ import annotations

import re

from tests.publication.helpers import Scenario

HEADERS = ("etag", "cache-control", "vary", "content-type", "content-length")


def _counter(metrics: str, route: str, status: int) -> float:
    pattern = (r'^sipas_http_requests_total\{[^}]*method="GET"[^}]*route="' + re.escape(route)
               + r'"[^}]*service="publication"[^}]*status="' + str(status) + r'"\} ([0-9.e+]+)$')
    found = re.search(pattern, metrics, re.M)
    return float(found.group(1)) if found else 0.0


async def test_the_fast_path_answers_exactly_as_the_routed_handler_and_leaves_it_everything_else(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    _, release_id = await s.published_release()
    api = s.api
    base = f"/v1/public/releases/{release_id}"
    published_at = (await api.get(base)).json()["metadata"]["published_at"]

    # An extra query parameter (ignored by the handler) sends the same request down the router.
    for path in (base, base + "/metadata"):
        for params in ({}, {"version": 1}, {"as_of": published_at}):
            fast = await api.get(path, params=params)
            routed = await api.get(path, params={**params, "routed": "1"})
            assert fast.status_code == routed.status_code == 200, (path, params, fast.text)
            assert fast.content == routed.content
            assert {h: fast.headers.get(h) for h in HEADERS} == {h: routed.headers.get(h) for h in HEADERS}
            assert fast.headers["x-correlation-id"] != routed.headers["x-correlation-id"]
            tag = {"If-None-Match": fast.headers["etag"]}
            fast304 = await api.get(path, params=params, headers=tag)
            routed304 = await api.get(path, params={**params, "routed": "1"}, headers=tag)
            assert fast304.status_code == routed304.status_code == 304 and fast304.content == b""
            assert dict(fast304.headers.items()).keys() - {"x-correlation-id"} == \
                dict(routed304.headers.items()).keys() - {"x-correlation-id"}
            assert fast304.headers["etag"] == fast.headers["etag"]
            # A weak or foreign tag is not a match (strong comparison); a list with it is.
            assert (await api.get(path, params=params, headers={"If-None-Match": "W/" + fast.headers["etag"]})).status_code == 200
            both = {"If-None-Match": f'"other", {fast.headers["etag"]}'}
            assert (await api.get(path, params=params, headers=both)).status_code == 304
        assert fast.headers["cache-control"] == "public, max-age=31536000, immutable"  # pinned by as_of

    # Metrics carry the route's template on the fast path too.
    before = _counter((await api.get("/metrics")).text, "/v1/public/releases/{release_id}", 200)
    assert (await api.get(base)).status_code == 200
    assert _counter((await api.get("/metrics")).text, "/v1/public/releases/{release_id}", 200) == before + 1

    # What the fast path leaves to the router gets the documented answers.
    assert (await api.get(base, params={"version": 0})).status_code == 422
    assert (await api.get(base, params={"version": 99})).status_code == 404
    assert (await api.get(base, params={"as_of": "yesterday"})).status_code == 422
    assert (await api.get(base, params={"as_of": "2999-01-01T00:00:00Z"})).status_code == 400
    r = await api.get("/v1/public/releases/00000000-0000-4000-8000-000000000000/metadata")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert (await api.get(base, headers=s.ministry)).status_code == 200  # a key: checked on the routed path
    assert (await api.get(base, headers={"X-API-Key": "sipas_nope_nope"})).status_code == 401

    # A request the fast path counted against the anonymous limit and then handed to the router
    # (here: an unknown release) is counted once.
    settings = s.app.state.settings
    settings.anonymous_burst, settings.anonymous_rate_per_minute = 3, 1
    unknown = "/v1/public/releases/00000000-0000-4000-8000-000000000001"
    assert [(await api.get(unknown)).status_code for _ in range(4)] == [404, 404, 404, 429]
    r = await api.get(base)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


async def test_an_expired_version_list_is_reloaded_once_for_all_the_requests_waiting_on_it(stack, clients):
    """When a release's cached version list expires under load, one query reloads it; the
    requests in flight share it (before, each sent its own, and they made the p99)."""
    import asyncio
    from time import monotonic

    from sqlalchemy import event

    s = Scenario(stack, clients)
    await s.keys()
    _, release_id = await s.published_release()
    base = f"/v1/public/releases/{release_id}"
    assert (await s.api.get(base)).status_code == 200
    cache = s.app.state.public_cache
    queries: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "FROM release_version" in statement:
            queries.append(statement)

    engine = s.app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        stamp, versions = cache.releases[release_id]
        cache.releases[release_id] = (monotonic() - cache.ttl - 0.01, versions)  # just expired
        answers = await asyncio.gather(*(s.api.get(base) for _ in range(20)))
        assert [r.status_code for r in answers] == [200] * 20
        assert len({r.content for r in answers}) == 1
        assert len(queries) == 1, queries
        assert cache.releases[release_id][0] > stamp and not cache.loading

        # A reload that began before a release invalidated the list does not store what it read.
        cache.invalidate(release_id)
        loading = asyncio.ensure_future(cache.versions(s.app.state.sessions, s.app.state.tables, release_id))
        await asyncio.sleep(0)
        cache.invalidate(release_id)
        assert await loading == versions
        assert release_id not in cache.releases
    finally:
        event.remove(engine, "before_cursor_execute", count)
