"""The public read API: figures, rankings, series, caching, CSV, paging, filters, limits, bad input,
and no personal data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from tests.publication.helpers import Clock, Scenario


async def test_public_collections_cache_page_filter_and_speak_csv(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    clock = Clock(dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.UTC))
    s.app.state.clock = clock
    old_wave = await s.wave(year=2024, fieldwork_start=dt.date(2024, 8, 1), methodology="sipas-2017")
    old_release = (await s.draft(await s.run(old_wave, methodology="sipas-2017")))["id"]
    await s.approve_and_publish(old_release)
    clock.advance(3600)
    wave_id = await s.wave(year=2026)
    run_id = await s.run(wave_id, previous={"01": 1, "02": 2, "04": 3, "79": 4, "92": 5}, extra_cell_fields=True)
    release_id = (await s.draft(run_id))["id"]
    await s.approve_and_publish(release_id)
    clock.advance(10)
    api, base = s.api, f"/v1/public/releases/{release_id}"

    # Strong ETag + Cache-Control on every answer; If-None-Match → 304 with no body.
    r = await api.get(base)
    etag = r.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert r.headers["Cache-Control"].startswith("public, max-age=")
    again = await api.get(base, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert (await api.get(base, headers={"If-None-Match": "W/" + etag})).status_code == 200  # weak never matches
    for path in ("/v1/public/releases", "/v1/public/waves", f"{base}/rankings", f"{base}/provinces", f"{base}/items",
                 f"{base}/expectations", f"{base}/national", f"{base}/metadata", f"{base}/versions",
                 f"{base}/provinces/79", "/v1/public/provinces/79/series"):
        first = await api.get(path)
        assert first.status_code == 200, (path, first.text)
        assert "ETag" in first.headers and "Cache-Control" in first.headers, path
        assert (await api.get(path, headers={"If-None-Match": first.headers["ETag"]})).status_code == 304, path
    pinned = await api.get(base, params={"version": 1})
    assert "immutable" in pinned.headers["Cache-Control"]

    # Provinces with SIPAS, parts and elements; suppressed and unreliable cells marked.
    provinces = (await api.get(f"{base}/provinces", params={"limit": 2})).json()
    assert [p["province_code"] for p in provinces["items"]] == ["01", "02"]
    assert {f["indicator"] for f in provinces["items"][0]["figures"]} == {"sipas", "part", "element"}
    seen = [p["province_code"] for p in provinces["items"]]
    cursor = provinces["next_cursor"]
    while cursor:
        page = (await api.get(f"{base}/provinces", params={"limit": 2, "cursor": cursor})).json()
        seen += [p["province_code"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert seen == ["01", "02", "04", "79", "92"]
    items = (await api.get(f"{base}/items", params={"province_code": "04"})).json()["items"]
    assert items[0]["suppressed"] is True and items[0]["value"] is None and items[0]["ci_low"] is None
    assert items[0]["flag"] == "suppressed" and items[0]["n"] == 4
    unreliable = (await api.get(f"{base}/figures", params={"flag": "unreliable", "indicator": "sipas"})).json()["items"]
    assert [(f["domain_code"], f["flag"]) for f in unreliable] == [("92", "unreliable")]
    expectations = (await api.get(f"{base}/expectations", params={"province_code": "01"})).json()["items"]
    assert [(e["code"], e["value"]) for e in expectations] == [("faster", 42.0)]
    # The figures collection pages with cursors too, to the same set.
    everything, cursor = [], None
    while True:
        page = (await api.get(f"{base}/figures", params={"limit": 7, **({"cursor": cursor} if cursor else {})})).json()
        everything += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(everything) == 4 + 5 * 5

    # Rankings with rank changes.
    ranks = (await api.get(f"{base}/rankings")).json()["items"]
    assert [r["province_code"] for r in ranks] == ["92", "79", "04", "02", "01"]
    assert {r["province_code"]: r["rank_change"] for r in ranks} == {"92": 4, "79": 2, "04": 0, "02": -2, "01": -4}

    # CSV for every collection, with a header row.
    for path in (f"{base}/rankings", f"{base}/provinces", f"{base}/figures", "/v1/public/releases", "/v1/public/waves",
                 f"{base}/versions", "/v1/public/provinces/79/series"):
        r = await api.get(path, params={"format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), path
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
        assert rows, path
        assert r.headers["ETag"] != (await api.get(path)).headers["ETag"], path  # JSON and CSV are different bytes
    by_accept = await api.get(f"{base}/rankings", headers={"Accept": "text/csv"})
    assert by_accept.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(by_accept.content.decode("utf-8-sig"))))
    assert rows[0]["province_code"] == "92" and rows[0]["rank"] == "1"

    # Time series of a province across waves, with method-break flags.
    series = (await api.get("/v1/public/provinces/79/series")).json()
    assert [p["wave"]["year"] for p in series["items"]] == [2024, 2026]
    assert [p["method_break"] for p in series["items"]] == [False, True]
    assert [p["merger_break"] for p in series["items"]] == [False, True]  # 2024: 63 provinces; 2026: 34
    assert series["items"][1]["rank"] == 2

    # Waves and releases, filters and changed_since (dashboards that sync).
    releases = (await api.get("/v1/public/releases")).json()["items"]
    assert [r["release_id"] for r in releases] == [release_id, old_release]
    assert [r["release_id"] for r in (await api.get("/v1/public/releases", params={"year": 2024})).json()["items"]] == [old_release]
    changed = (await api.get("/v1/public/releases", params={"changed_since": "2026-12-01T03:30:00Z"})).json()["items"]
    assert [r["release_id"] for r in changed] == [release_id]
    page1 = (await api.get("/v1/public/waves", params={"limit": 1})).json()
    page2 = (await api.get("/v1/public/waves", params={"limit": 1, "cursor": page1["next_cursor"]})).json()
    assert [w["wave"]["year"] for w in page1["items"] + page2["items"]] == [2026, 2024] and page2["next_cursor"] is None
    # as_of between the two publications sees only the old release.
    asof = (await api.get("/v1/public/releases", params={"as_of": "2026-12-01T03:30:00Z"})).json()["items"]
    assert [r["release_id"] for r in asof] == [old_release]

    # No personal data reaches the public API even if an upstream export carried some.
    for path in (base, f"{base}/figures?limit=500", f"{base}/metadata", f"{base}/provinces"):
        text = (await api.get(path)).text
        for needle in ("Nguyễn", "0901234567", "Trần", "Lê Lợi", "respondent_name", "phone", "contacts"):
            assert needle not in text, (path, needle)


async def test_bad_input_gets_clear_problems_and_limits_hold(stack, clients):
    s = Scenario(stack, clients)
    _, release_id = await s.published_release()
    api, base = s.api, f"/v1/public/releases/{release_id}"
    cases = {
        "/v1/public/releases/00000000-0000-4000-8000-000000000000": 404,
        "/v1/public/releases/not-a-uuid": 422,
        f"{base}/provinces/99": 404,
        f"{base}/provinces/abc": 422,
        f"{base}/items?province_code=99": 404,
        f"{base}/rankings?cursor=%%%": 400,
        f"{base}/rankings?cursor=eyJ4IjoxfQ": 400,  # valid base64 JSON, not ours
        f"{base}/provinces?cursor=eyJrIjoxfQ": 400,  # a figures cursor used for provinces
        f"{base}?as_of=yesterday": 422,
        f"{base}?as_of=2999-01-01T00:00:00Z": 400,
        f"{base}?as_of=2000-01-01T00:00:00Z": 404,
        "/v1/public/releases?as_of=2000-01-01T00:00:00Z": 404,
        "/v1/public/releases?changed_since=13/13/2026": 422,
        f"{base}/figures?limit=501": 422,
        f"{base}/provinces?limit=101": 422,
        f"{base}?version=9": 404,
        "/v1/public/provinces/99/series": 404,
    }
    for path, status in cases.items():
        r = await api.get(path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json", path
        assert r.json()["status"] == status and r.json()["type"].startswith("urn:sipas:problem:")
    # A cursor from another release is refused, not silently applied.
    page = (await api.get(f"{base}/figures", params={"limit": 1})).json()
    _, other = await s.published_release(year=2025)
    r = await api.get(f"/v1/public/releases/{other}/figures", params={"cursor": page["next_cursor"]})
    assert r.status_code == 400

    # Management side: unknown runs, provisional runs, a second release for a wave.
    r = await api.post("/v1/releases", json={"run_id": "00000000-0000-4000-8000-000000000000"}, headers=s.ministry)
    assert r.status_code == 404
    wave = await s.wave(year=2027)
    provisional = await s.run(wave, kind="provisional")
    r = await api.post("/v1/releases", json={"run_id": provisional}, headers=s.ministry)
    assert r.status_code == 409 and "final" in r.json()["detail"]
    final = await s.run(wave)
    await s.draft(final)
    r = await api.post("/v1/releases", json={"run_id": final}, headers=s.ministry)
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:conflict"
    # A schedule without a time zone, or in the past, is refused.
    rel = (await api.get("/v1/releases", headers=s.ministry)).json()["items"][0]["id"]
    await api.post(f"/v1/releases/{rel}/versions/1/approve", headers=s.ministry)
    r = await api.post(f"/v1/releases/{rel}/versions/1/publish", json={"publish_at": "2030-01-01T00:00:00"}, headers=s.ministry)
    assert r.status_code == 409 and "time zone" in r.json()["detail"]
    r = await api.post(f"/v1/releases/{rel}/versions/1/publish", json={"publish_at": "2020-01-01T00:00:00Z"}, headers=s.ministry)
    assert r.status_code == 409
    r = await api.post(f"/v1/releases/{rel}/corrections", json={"reason": "too early"}, headers=s.ministry)
    assert r.status_code == 409  # nothing public to correct yet

    # Limits: anonymous rate (429 with Retry-After), request size (413).
    tuning = s.app.state.settings
    tuning.anonymous_burst = 5
    tuning.anonymous_rate_per_minute = 6
    statuses = [(await s.api.get(f"/v1/public/releases/{release_id}")).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5] == 429
    r = await s.api.get(f"/v1/public/releases/{release_id}")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["type"] == "urn:sipas:problem:rate-limited"
    # Keys are not limited by the anonymous bucket.
    assert (await s.api.get(f"/v1/public/releases/{release_id}", headers=s.ministry)).status_code == 200

    tuning.max_request_bytes = 1024
    big = {"text": "x" * 3000}
    r = await s.api.post(f"/v1/releases/{release_id}/versions/1/comments", json=big, headers=s.ministry)
    assert r.status_code == 413 and r.json()["type"] == "urn:sipas:problem:payload-too-large"

    async def chunks():
        yield json.dumps(big).encode()

    r = await s.api.post(f"/v1/releases/{release_id}/versions/1/comments", content=chunks(),
                         headers={**s.ministry, "Content-Type": "application/json"})
    assert r.status_code == 413
