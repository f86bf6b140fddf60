"""Frames pushed by provincial portals (batches) and uploaded as CSV: per-record validation,
idempotency, Vietnamese text, province scope, nothing half-stored."""

from __future__ import annotations

import unicodedata

import pytest

from tests.sampling.helpers import open_wave, push, transactions

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one service per module: conftest.py


async def frame(clients, headers, wave_id):
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/frame", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_batch_validates_each_record_and_is_idempotent(clients):
    ministry = await clients.key("ministry")
    portal = await clients.key("portal", "01")
    wave = await open_wave(clients, ministry)
    good = transactions("01", 5)
    bad = [
        {**transactions("01", 1, start=100)[0], "commune_code": "26506"},  # a commune of another province
        {**transactions("01", 1, start=101)[0], "commune_code": "99999"},  # not a commune at all
        {k: v for k, v in transactions("01", 1, start=102)[0].items() if k != "field"},  # missing field
        {**transactions("01", 1, start=103)[0], "level": "galaxy", "phone": "call me"},
        {**transactions("01", 1, start=104)[0], "result_on": "2026-01-01"},  # before received_on
        transactions("79", 1, start=105)[0],  # another province: not this portal's
        "not an object",
    ]
    same_again = dict(good[0])
    clash = {**good[1], "field": "other"}
    records = good + bad + [same_again, clash]
    r = await push(clients, portal, wave["id"], "2026-08-01", records)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["received"], report["accepted"], report["duplicates"], report["rejected"]) == (14, 5, 1, 8)
    problems = {e["index"]: " ".join(e["problems"]) for e in report["errors"]}
    assert "belongs to province 79" in problems[5]
    assert "unknown commune" in problems[6]
    assert "field" in problems[7]
    assert "level" in problems[8] and "phone" in problems[8]
    assert "result_on" in problems[9]
    assert "province 01 only" in problems[10]
    assert "object" in problems[11]
    assert "different content" in problems[13]
    assert "call me" not in str(report)  # values are never echoed (they may be personal data)

    # The same batch again: the stored report, nothing new. Other content under the id: 409.
    again = await push(clients, portal, wave["id"], "2026-08-01", records)
    assert again.status_code == 200 and again.json() == {**report, "replayed": True}
    r = await push(clients, portal, wave["id"], "2026-08-01", good[:2])
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    # The same records in a new batch are one record each.
    r = await push(clients, portal, wave["id"], "2026-08-02", good)
    assert r.json()["accepted"] == 0 and r.json()["duplicates"] == 5
    assert (await frame(clients, ministry, wave["id"]))["record_count"] == 5

    # Another province's portal cannot see a provincial wave of Hà Nội.
    hanoi_wave = await open_wave(clients, ministry, code="SIPAS-2026-01", scope="provincial", province="01")
    hcm = await clients.key("portal", "79")
    r = await push(clients, hcm, hanoi_wave["id"], "b1", transactions("79", 2))
    assert r.status_code == 404
    # An observer may not push.
    r = await push(clients, await clients.key("observer"), wave["id"], "b9", good)
    assert r.status_code == 403

    # Too many records: 413, nothing stored.
    big = transactions("01", 10_001, start=1000)
    r = await push(clients, portal, wave["id"], "big", big)
    assert r.status_code == 413, r.text
    assert (await frame(clients, ministry, wave["id"]))["record_count"] == 5

    # Closed frame, then a wave past frame_open: refused with a problem, not stored.
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/frame/close", headers=ministry)
    closed = r.json()
    assert closed["status"] == "closed" and len(closed["fingerprint"]) == 64
    r = await push(clients, portal, wave["id"], "late", transactions("01", 2, start=500))
    assert r.status_code == 409
    assert r.json()["type"] == "urn:sipas:problem:invalid-state"

    await check_vietnamese_text_is_stored_nfc_and_round_trips(clients, ministry)


async def check_vietnamese_text_is_stored_nfc_and_round_trips(clients, ministry):
    wave = await open_wave(clients, ministry, code="SIPAS-NFC")
    name = "Nguyễn Thị Ánh Tuyết"
    record = {**transactions("01", 1)[0], "full_name": unicodedata.normalize("NFD", name),
              "address": unicodedata.normalize("NFD", "Số 5, Phường Hoàn Kiếm")}
    r = await push(clients, ministry, wave["id"], "nfd", [record])
    assert r.json()["accepted"] == 1, r.text
    # NFC and NFD are the same record: pushing the NFC form is a duplicate, not a clash.
    r = await push(clients, ministry, wave["id"], "nfc", [{**record, "full_name": name}])
    assert r.json()["duplicates"] == 1
    app = clients.stack.apps["sampling"]
    from sqlalchemy import select

    from services.sampling.models import frame_contact

    async with app.state.sessions() as session:
        stored = (await session.execute(select(frame_contact.c.full_name).where(frame_contact.c.wave_id == wave["id"]))).scalar_one()
    assert stored == name and unicodedata.is_normalized("NFC", stored)


CSV_HEADER = ("transaction_id,province_code,commune_code,procedure_code,field,level,received_on,result_on,"
              "respondent_type,full_name,phone,address\n")


def csv_row(i: int, **over) -> str:
    row = {"transaction_id": f"C01-{i:05d}", "province_code": "01", "commune_code": "00070", "procedure_code": "P-001",
           "field": "land", "level": "commune", "received_on": "2026-02-01", "result_on": "2026-02-05",
           "respondent_type": "citizen", "full_name": f"Lê Văn {i}", "phone": "0912345678",
           "address": f'"Số {i}, ngõ 3\nPhường Hoàn Kiếm"'}
    row.update(over)
    return ",".join(row.values()) + "\n"


async def upload(clients, headers, wave_id, body: bytes, batch_id="file-1", content_type="text/csv"):
    return await clients.sampling.post(f"/v1/waves/{wave_id}/frame/csv", params={"batch_id": batch_id},
                                       content=body, headers={**headers, "Content-Type": content_type})


async def test_csv_upload_streams_rows_with_a_per_row_report(clients):
    ministry = await clients.key("ministry")
    portal = await clients.key("portal", "01")
    wave = await open_wave(clients, ministry, code="SIPAS-2026-CSV")
    rows = [csv_row(i) for i in range(50)]
    rows.append(csv_row(50, level="nowhere"))
    rows.append("C01-x,01,too,few\n")
    body = ("\ufeff" + CSV_HEADER + "".join(rows)).encode("utf-8")
    r = await upload(clients, portal, wave["id"], body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["received"], report["accepted"], report["rejected"]) == (52, 50, 2)
    assert [e["index"] for e in report["errors"]] == [50, 51]
    # Uploading the same file again replays the report; other content under the same id is a 409.
    assert (await upload(clients, portal, wave["id"], body)).json()["replayed"] is True
    assert (await upload(clients, portal, wave["id"], body + csv_row(99).encode())).status_code == 409

    # Not UTF-8 (a legacy Windows encoding): 422, and nothing of the file is stored.
    legacy = (CSV_HEADER + csv_row(200, full_name="Tran Van A", address="Ha Noi")).encode("utf-8") + "é\n".encode("latin-1")
    r = await upload(clients, portal, wave["id"], legacy, batch_id="file-2")
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]
    # A header that is not the frame format: 422, nothing stored.
    r = await upload(clients, portal, wave["id"], b"id,name\n1,x\n", batch_id="file-3")
    assert r.status_code == 422 and r.json()["missing_columns"] == ["transaction_id", "province_code"]
    # Not CSV at all.
    r = await upload(clients, portal, wave["id"], b"{}", batch_id="file-4", content_type="application/json")
    assert r.status_code == 415
    r = await clients.sampling.get(f"/v1/waves/{wave['id']}/frame", headers=ministry)
    assert r.json()["record_count"] == 50 and r.json()["by_province"] == {"01": 50}


async def test_a_nul_character_is_a_record_error_on_both_backends(clients):
    """PostgreSQL text cannot hold NUL: such a record is refused with a reason (on SQLite too, so
    both backends keep the same frame), and the rest of the batch is stored."""
    ministry = await clients.key("ministry")
    wave = await open_wave(clients, ministry, code="SIPAS-2026-NUL")
    good = transactions("01", 3, start=700)
    records = [good[0], {**good[1], "agency": "UBND\x00 xã"}, good[2]]
    r = await push(clients, ministry, wave["id"], "nul", records)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["accepted"], report["rejected"]) == (2, 1)
    assert report["errors"] == [{"index": 1, "record_key": good[1]["transaction_id"],
                                 "problems": ["agency: must not contain NUL characters"]}]
    assert (await frame(clients, ministry, wave["id"]))["record_count"] == 2
