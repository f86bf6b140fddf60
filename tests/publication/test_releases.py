"""Releases: draft → comments → approval → publication (now or at an embargo) → corrections."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from tests.conftest import eventually
from tests.publication.helpers import Clock, Scenario


async def test_a_final_run_becomes_a_public_release_after_approval(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    wave_id = await s.wave()
    run_id = await s.run(wave_id)
    release = await s.draft(run_id)
    release_id = release["id"]
    assert release["wave_id"] == wave_id
    assert [v["status"] for v in release["versions"]] == ["draft"]

    # A draft is invisible to the public, exactly like a release that does not exist.
    assert (await s.api.get(f"/v1/public/releases/{release_id}")).status_code == 404
    assert (await s.api.get("/v1/public/releases")).json()["items"] == []

    # Observers read the draft's figures and comment; they cannot approve.
    figures = await s.api.get(f"/v1/releases/{release_id}/versions/1/figures", params={"domain": "nation"},
                              headers=s.observer)
    assert figures.status_code == 200, figures.text
    assert {f["indicator"] for f in figures.json()["items"]} == {"sipas", "part", "element"}
    r = await s.api.post(f"/v1/releases/{release_id}/versions/1/comments", json={"text": "Đề nghị bổ sung chú thích"},
                         headers=s.observer)
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "observer" and r.json()["author"] == "observer:Ủy ban MTTQ"
    comments = (await s.api.get(f"/v1/releases/{release_id}/versions/1/comments", headers=s.ministry)).json()["items"]
    assert [c["text"] for c in comments] == ["Đề nghị bổ sung chú thích"]
    assert (await s.api.post(f"/v1/releases/{release_id}/versions/1/approve", headers=s.observer)).status_code == 403

    # Publishing before approval is refused.
    r = await s.api.post(f"/v1/releases/{release_id}/versions/1/publish", headers=s.ministry)
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:invalid-state"

    version = await s.approve_and_publish(release_id)
    assert version["status"] == "published"
    doc = await s.api.get(f"/v1/public/releases/{release_id}")
    assert doc.status_code == 200, doc.text
    body = doc.json()
    assert body["metadata"]["wave"]["wave_id"] == wave_id
    assert body["metadata"]["methodology_version"] == "sipas-2023"
    assert body["metadata"]["footnotes"] == ["Số liệu sơ bộ"]
    assert body["metadata"]["wave"]["fieldwork_start"] == "2026-08-01"
    assert {x["province_code"]: x["n"] for x in body["metadata"]["sample_sizes"]}["01"] == 120
    national = {(f["code"], f["weighting"]): f for f in body["national"]}
    assert national[("sipas", "none")]["value"] == 80.0
    assert national[("sipas", "none")]["ci_low"] < 80.0 < national[("sipas", "none")]["ci_high"]

    # The announcement is an event (outbox) and the audit log has every step.
    app = stack.apps["publication"]
    tables = app.state.tables

    async def announced():
        async with app.state.sessions() as session:
            rows = (await session.execute(select(tables["outbox"].c.type))).scalars().all()
        assert "sipas.publication.release.published.v1" in rows

    await eventually(announced)
    async with app.state.sessions() as session:
        actions = (await session.execute(
            select(tables["audit_log"].c.action).where(tables["audit_log"].c.entity_id == release_id)
            .order_by(tables["audit_log"].c.seq))).scalars().all()
    assert actions == ["release.create", "release.comment", "release.approve", "release.publish"]


async def test_an_embargoed_release_is_invisible_one_second_before_its_time_and_visible_at_it(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    clock = Clock(dt.datetime(2026, 12, 1, 2, 0, 0, tzinfo=dt.UTC))
    stack.apps["publication"].state.clock = clock
    wave_id = await s.wave()
    release = await s.draft(await s.run(wave_id))
    release_id = release["id"]
    embargo = "2026-12-01T10:00:00+07:00"  # Hà Nội time, = 03:00:00Z
    version = await s.approve_and_publish(release_id, publish_at=embargo)
    assert version["status"] == "scheduled"
    assert version["publish_at"].startswith("2026-12-01T03:00:00")

    clock.now = dt.datetime(2026, 12, 1, 2, 59, 59, tzinfo=dt.UTC)
    for path in (f"/v1/public/releases/{release_id}", f"/v1/public/releases/{release_id}/rankings",
                 f"/v1/public/releases/{release_id}/provinces"):
        assert (await s.api.get(path)).status_code == 404, path
    assert (await s.api.get("/v1/public/releases")).json()["items"] == []

    clock.now = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.UTC)
    r = await s.api.get(f"/v1/public/releases/{release_id}")
    assert r.status_code == 200, r.text
    assert [x["release_id"] for x in (await s.api.get("/v1/public/releases")).json()["items"]] == [release_id]

    # The announcement follows once the embargo passed (scheduler), never before.
    app = stack.apps["publication"]
    app.state.scheduler.notify()

    async def announced():
        got = (await s.api.get(f"/v1/releases/{release_id}", headers=s.ministry)).json()
        assert got["versions"][0]["announced_at"] is not None

    await eventually(announced)


async def test_a_correction_is_a_new_version_and_the_old_one_stays_readable_as_of(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    clock = Clock(dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.UTC))
    stack.apps["publication"].state.clock = clock
    wave_id = await s.wave()
    release_id = (await s.draft(await s.run(wave_id)))["id"]
    await s.approve_and_publish(release_id)
    clock.advance(3600)

    corrected_run = await s.run(wave_id, shift=1.5)
    r = await s.api.post(f"/v1/releases/{release_id}/corrections",
                         json={"reason": "Sửa lỗi nhập liệu tỉnh 79", "run_id": corrected_run}, headers=s.ministry)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2 and r.json()["status"] == "draft"
    # Until the correction is published the public still reads version 1.
    doc = (await s.api.get(f"/v1/public/releases/{release_id}")).json()
    assert doc["metadata"]["version"] == 1
    await s.approve_and_publish(release_id, version=2)
    clock.advance(60)

    latest = (await s.api.get(f"/v1/public/releases/{release_id}")).json()
    assert latest["metadata"]["version"] == 2
    assert latest["metadata"]["correction_reason"] == "Sửa lỗi nhập liệu tỉnh 79"
    assert {f["code"]: f["value"] for f in latest["national"] if f["weighting"] == "none"}["sipas"] == 81.5

    # as_of between the two publications reads version 1, to the figure.
    old = await s.api.get(f"/v1/public/releases/{release_id}", params={"as_of": "2026-12-01T03:30:00Z"})
    assert old.status_code == 200
    assert old.json()["metadata"]["version"] == 1
    assert {f["code"]: f["value"] for f in old.json()["national"] if f["weighting"] == "none"}["sipas"] == 80.0
    assert "immutable" in old.headers["Cache-Control"]
    ranks = await s.api.get(f"/v1/public/releases/{release_id}/rankings", params={"as_of": "2026-12-01T03:30:00"})
    assert ranks.json()["version"] == 1
    # Every version stays readable by number too, and the list shows the reason.
    assert (await s.api.get(f"/v1/public/releases/{release_id}", params={"version": 1})).json()["metadata"]["version"] == 1
    versions = (await s.api.get(f"/v1/public/releases/{release_id}/versions")).json()["items"]
    assert [(v["version"], v["correction_reason"]) for v in versions] == [(1, None), (2, "Sửa lỗi nhập liệu tỉnh 79")]
    # Before anything was published: a clear 404.
    r = await s.api.get("/v1/public/releases", params={"as_of": "2026-11-30T00:00:00Z"})
    assert r.status_code == 404 and r.json()["type"] == "urn:sipas:problem:not-found"
