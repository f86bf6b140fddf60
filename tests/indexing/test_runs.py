"""The indexing service in the running stack: decisions in, provisional index, final runs out.

Upstream events are published on the stack's bus as sampling and verification would publish
them (tests/indexing/helpers.py), so these tests do not depend on the other services' progress.
The methodology is put in the indexing app's methodology cache (what fetch_methodology reads).
"""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from sqlalchemy import select

from shared.outbox import row_envelopes
from tests.conftest import eventually
from tests.indexing.helpers import (
    accepted,
    fixture_methodology,
    fixture_rows,
    publish,
    rejected,
    seed_methodologies,
    strata_event,
    wave_event,
)


async def _accepted_count(clients, headers, wave_id: str, n: int):
    async def check():
        r = await clients.indexing.get(f"/v1/waves/{wave_id}/accepted", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["accepted_forms"] == n, r.json()
        return r.json()

    return await eventually(check, timeout=90)


async def _wave(stack, clients, headers, *, year=2024, methodology=None, **kw):
    m = methodology or fixture_methodology()
    seed_methodologies(stack, m)
    w = wave_event(year, m.id, **kw)
    await publish(stack, w)

    async def seen():
        r = await clients.indexing.get(f"/v1/waves/{w.wave_id}", headers=headers)
        assert r.status_code == 200, r.text

    await eventually(seen)
    return str(w.wave_id)


async def _outbox(stack, type_: str) -> list[dict]:
    app = stack.apps["indexing"]
    table = app.state.tables["outbox"]
    async with app.state.sessions() as session:
        rows = (await session.execute(select(table.c.envelope).where(table.c.type == type_))).scalars().all()
    return [envelope for body in rows for envelope in row_envelopes(body)]


def _cell(cells, domain, domain_code, indicator, code, weighting="design"):
    found = [c for c in cells if (c["domain"], c["domain_code"], c["indicator"], c["code"], c["weighting"])
             == (domain, domain_code, indicator, code, weighting)]
    assert len(found) == 1, (domain, domain_code, indicator, code, weighting, len(found))
    return found[0]


async def test_final_run_from_accepted_forms_reproduces_the_r_check(stack, clients):
    """The R fixture's forms arrive as response.accepted events; the final run's cells are R's
    numbers, the run is announced once, and its export is what publication reads."""
    import json
    from pathlib import Path

    expected = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "estimation-check"
                           / "expected.json").read_text())
    ministry = await clients.key("ministry")
    wave_id = await _wave(stack, clients, ministry)
    rows, sizes = fixture_rows()
    await publish(stack, strata_event(uuid.UUID(wave_id), sizes), *[accepted(uuid.UUID(wave_id), r) for r in rows])
    summary = await _accepted_count(clients, ministry, wave_id, len(rows))

    r = await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=ministry, json={"reason": "test"})
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["accepted_forms"] == len(rows)
    assert run["accepted_fingerprint"] == summary["accepted_fingerprint"]
    assert run["methodology_version"] == "check-2024"
    assert run["code_version"]

    export = (await clients.indexing.get(f"/v1/runs/{run['run_id']}/export", headers=ministry)).json()
    cells = export["cells"]
    for item, want in expected["national"]["items"].items():
        code = next(c for c in export["run"]["parameters"]["items"] if c.endswith("." + item))
        got = _cell(cells, "nation", "VN:pooled", "item", code)
        assert got["value"] == pytest.approx(want["index"], abs=1e-9)
        assert got["se"] == pytest.approx(want["se"], abs=1e-6)
    for element, want in expected["national"]["elements"].items():
        got = _cell(cells, "nation", "VN:pooled", "element", element)
        assert got["value"] == pytest.approx(want["index"], abs=1e-9)
        assert got["se"] == pytest.approx(want["se"], abs=1e-6)
    for prov, want in expected["provinces"].items():
        got = _cell(cells, "province", prov, "sipas", "sipas")
        assert got["value"] == pytest.approx(want["overall"]["index"], abs=1e-9)
        assert got["se"] == pytest.approx(want["overall"]["se"], abs=1e-6)
        got = _cell(cells, "province", prov, "sipas", "sipas", "none")
        assert got["value"] == pytest.approx(expected["unweighted"]["provinces"][prov]["overall"], abs=1e-9)
    mean = _cell(cells, "nation", "VN:mean_of_provinces", "sipas", "sipas", "none")
    assert mean["value"] == pytest.approx(expected["unweighted"]["national_mean_of_provinces"], abs=1e-9)

    # One run.completed event in the outbox, matching the run.
    events = await _outbox(stack, "sipas.indexing.run.completed.v1")
    assert len(events) == 1
    assert events[0]["data"]["run_id"] == run["run_id"]
    assert events[0]["data"]["accepted_fingerprint"] == run["accepted_fingerprint"]

    # Same accepted set, same numbers: a second run differs only in its id and time.
    r2 = (await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=ministry)).json()
    assert r2["run_id"] != run["run_id"]
    assert r2["accepted_fingerprint"] == run["accepted_fingerprint"]
    export2 = (await clients.indexing.get(f"/v1/runs/{r2['run_id']}/export", headers=ministry)).json()
    assert export2["cells"] == cells

    # Publication reads the export through its own allow-list model: it must accept ours.
    publication_schemas = pytest.importorskip("services.publication.schemas")
    parsed = publication_schemas.RunExport.model_validate(export)
    assert str(parsed.run.run_id) == run["run_id"]


# --------------------------------------------------------------------------------------------------
# Planted cases
# --------------------------------------------------------------------------------------------------

ITEMS = ["access.a1", "access.a2", "access.a3", "procedures.p1", "procedures.p2", "procedures.p3",
         "procedures.p4", "staff.s1", "staff.s2"]


def _form(code: str, stratum: str, province: str, satisfied: bool, *, weight: float = 50.0, blank=(),
          psu: str | None = None) -> dict:
    value = 5 if satisfied else 2
    return {"form_code": code, "stratum": stratum, "psu": psu or code, "weight": weight, "province_code": province,
            "level": "commune", "answers": {c: (None if c in blank else value) for c in ITEMS}}


def planted_forms() -> tuple[list[dict], dict[str, int]]:
    """Province 01: stratum 01-a (N=1000) all satisfied; stratum 01-b (N=3000) half satisfied and
    nobody there answered access.a1. Base weights are all 50, so the nonresponse adjustment
    (×1000/600 and ×3000/600) is what makes the design-weighted figure differ from the
    unweighted one. Province 02: 3 in 4 answers satisfied, varying by item. Province 03: 5 forms (suppressed)."""
    forms = [_form(f"A{i:02d}", "01-a", "01", True) for i in range(12)]
    forms += [_form(f"B{i:02d}", "01-b", "01", i % 2 == 0, blank={"access.a1"}) for i in range(12)]
    forms += [_form(f"C{i:02d}", "02-a", "02", True) for i in range(12)]
    for i, f in enumerate(forms[-12:]):  # items not perfectly correlated here: 3 in 4 satisfied
        f["answers"] = {c: (5 if (i + j) % 4 else 2) for j, c in enumerate(ITEMS)}
    forms += [_form(f"D{i:02d}", "03-a", "03", True) for i in range(5)]
    return forms, {"01-a": 1000, "01-b": 3000, "02-a": 2000, "03-a": 500}


async def test_planted_cases_nonresponse_empty_stratum_suppression_composite_se(stack, clients):
    from services.indexing.estimation import SampleDesign, linear_combination

    ministry = await clients.key("ministry")
    wave_id = await _wave(stack, clients, ministry)
    forms, sizes = planted_forms()
    wid = uuid.UUID(wave_id)
    await publish(stack, strata_event(wid, sizes))
    await publish(stack, *[accepted(wid, f) for f in forms])
    await _accepted_count(clients, ministry, wave_id, len(forms))
    run = (await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=ministry)).json()
    cells = (await clients.indexing.get(f"/v1/runs/{run['run_id']}/export", headers=ministry)).json()["cells"]

    # Nonresponse adjustment: responding weights sum to N_h, so province 01's a2 index is
    # (1000·1 + 3000·0.5) / 4000 = 62.5 design-weighted, and 18/24 = 75 unweighted.
    assert _cell(cells, "province", "01", "item", "access.a2")["value"] == pytest.approx(62.5, abs=1e-9)
    assert _cell(cells, "province", "01", "item", "access.a2", "none")["value"] == pytest.approx(75.0, abs=1e-9)
    assert run["parameters"]["nonresponse_adjustment"]["adjusted_strata"] == 4

    # A stratum where nobody answered a1: province 01's a1 comes from stratum 01-a alone (n=12),
    # and the element is still the mean of its three items; nothing is NaN.
    a1 = _cell(cells, "province", "01", "item", "access.a1")
    assert a1["n"] == 12 and a1["value"] == pytest.approx(100.0)
    access = _cell(cells, "province", "01", "element", "access")
    assert access["value"] == pytest.approx((100.0 + 62.5 + 62.5) / 3, abs=1e-9)
    # Nationally a1 is answered in 01-a, 02-a, 03-a only: (1000·1 + 2000·p + 500·1) / 3500.
    p02 = sum(1 for f in forms if f["province_code"] == "02" and f["answers"]["access.a1"] == 5) / 12
    nat_a1 = _cell(cells, "nation", "VN:pooled", "item", "access.a1")
    assert nat_a1["value"] == pytest.approx(100 * (1500 + 2000 * p02) / 3500, abs=1e-9)

    # Suppression: province 03 has 5 valid answers (< 10): no figure at all, flag says why.
    for c in [c for c in cells if c["domain"] == "province" and c["domain_code"] == "03"]:
        assert c["flag"] == "suppressed" and c["value"] is None and c["se"] is None, c
    # n between 10 and 30: published, flagged unreliable.
    assert _cell(cells, "province", "02", "sipas", "sipas")["flag"] == "unreliable"

    # Composite SE: sqrt(cᵀVc) over the item covariance under the design (strata, fpc), not an
    # average of item SEs. Recomputed here from the estimator's primitives.
    import numpy as np

    adj = {s: sizes[s] / (50.0 * sum(1 for f in forms if f["stratum"] == s)) for s in sizes}
    w = np.array([f["weight"] * adj[f["stratum"]] for f in forms])
    codes = np.array([[f["answers"][c] or 0 for c in ITEMS] for f in forms])
    strata = np.array([f["stratum"] for f in forms], dtype=object)
    design = SampleDesign(strata, None, np.array([float(sizes[s]) for s in strata]))
    est = design.ratio_estimates(codes >= 4, codes >= 1, w)
    coef = np.array([0, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0])
    value, se = linear_combination(est.ratio, est.cov, coef)
    got = _cell(cells, "nation", "VN:pooled", "element", "procedures")
    assert got["value"] == pytest.approx(100 * value, abs=1e-9)
    assert got["se"] == pytest.approx(100 * se, abs=1e-9)
    mean_of_ses = np.mean([_cell(cells, "nation", "VN:pooled", "item", c)["se"] for c in ITEMS[3:7]])
    assert abs(got["se"] - mean_of_ses) > 1e-3
    # The design effect compares with a simple random sample of the same n.
    assert got["deff"] is not None and got["deff"] > 0



def _province_forms(prefix: str, spec: dict[str, int], total: int = 12) -> list[dict]:
    """``spec``: province -> how many of its ``total`` forms are satisfied on every item."""
    return [_form(f"{prefix}{p}-{i:02d}", f"{p}-s", p, i < k) for p, k in spec.items() for i in range(total)]


def _ranks(rankings, indicator="sipas") -> dict[str, dict]:
    return {r["province_code"]: r for r in rankings if r["indicator"] == indicator}


async def _run_wave(stack, clients, headers, year, forms, methodology=None, **kw):
    wave_id = await _wave(stack, clients, headers, year=year, methodology=methodology, **kw)
    await publish(stack, *[accepted(uuid.UUID(wave_id), f, methodology=(methodology.id if methodology else
                                                                         "check-2024")) for f in forms])
    await _accepted_count(clients, headers, wave_id, len(forms))
    r = await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=headers)
    assert r.status_code == 201, r.text
    return wave_id, r.json()


async def test_reversal_moves_a_province_index_and_rank_with_ties_and_method_break(stack, clients):
    ministry = await clients.key("ministry")
    observer = await clients.key("observer")
    # 2023: 01 = 10/12, 02 = 6/12, 03 = 8/12 -> ranks 01, 03, 02.
    _, run23 = await _run_wave(stack, clients, ministry, 2023, _province_forms("X", {"01": 10, "02": 6, "03": 8}))
    # 2024: 01 and 02 tie at 9/12 (both rank 1), 03 = 7/12 (rank 3, not 2).
    forms24 = _province_forms("Y", {"01": 9, "02": 9, "03": 7})
    wave24, run24 = await _run_wave(stack, clients, ministry, 2024, forms24)
    assert run24["previous_run_id"] == run23["run_id"]
    ranks = _ranks((await clients.indexing.get(f"/v1/runs/{run24['run_id']}/rankings", headers=observer)).json()["items"])
    assert {p: r["rank"] for p, r in ranks.items()} == {"01": 1, "02": 1, "03": 3}
    assert ranks["02"]["previous_rank"] == 3 and ranks["02"]["rank_change"] == 2
    assert ranks["03"]["rank_change"] == -1 and ranks["03"]["previous_value"] == pytest.approx(100 * 8 / 12)
    assert all(r["comparable"] for r in ranks.values())

    # Reversal: two satisfied forms of province 02 are voided after a back-check (decision v2).
    # The provisional index moves at once: 02 = 7/10.
    wid = uuid.UUID(wave24)
    voided = [f for f in forms24 if f["province_code"] == "02"][:2]
    await publish(stack, *[rejected(wid, f["form_code"], version=2) for f in voided])
    # A late redelivery of the older acceptance changes nothing.
    await publish(stack, accepted(wid, voided[0], version=1))
    await _accepted_count(clients, ministry, wave24, len(forms24) - 2)
    prov = (await clients.indexing.get(f"/v1/waves/{wave24}/provisional?domain=province", headers=observer)).json()
    assert prov["accepted_forms"] == len(forms24) - 2
    assert _cell(prov["cells"], "province", "02", "sipas", "sipas", "none")["value"] == pytest.approx(70.0)

    rerun = (await clients.indexing.post(f"/v1/waves/{wave24}/runs", headers=ministry)).json()
    assert rerun["accepted_fingerprint"] != run24["accepted_fingerprint"]
    export = (await clients.indexing.get(f"/v1/runs/{rerun['run_id']}/export", headers=observer)).json()
    assert _cell(export["cells"], "province", "02", "sipas", "sipas")["value"] == pytest.approx(70.0)
    ranks = _ranks(export["rankings"])
    assert {p: r["rank"] for p, r in ranks.items()} == {"01": 1, "02": 2, "03": 3}
    assert ranks["02"]["rank_change"] == 1  # against 2023's rank 3
    # The first run is immutable: still 75 and rank 1.
    old = (await clients.indexing.get(f"/v1/runs/{run24['run_id']}/export", headers=observer)).json()
    assert _cell(old["cells"], "province", "02", "sipas", "sipas")["value"] == pytest.approx(75.0)
    # The provisional figures agree with the final run's point estimates.
    for c in prov["cells"]:
        if c["value"] is not None:
            assert c["value"] == pytest.approx(_cell(export["cells"], "province", c["domain_code"], c["indicator"],
                                                     c["code"], c["weighting"])["value"], abs=1e-9)

    # 2025 under another methodology version and after the 2025 merger: flagged, no rank change.
    from tests.indexing.helpers import fixture_methodology as fm

    m25 = fm().model_copy(update={"id": "check-2025"})
    import datetime as dt

    _, run25 = await _run_wave(stack, clients, ministry, 2025, _province_forms("Z", {"01": 6, "02": 9, "03": 8}),
                               methodology=m25, fieldwork_start=dt.date(2025, 8, 1))
    ranks = _ranks((await clients.indexing.get(f"/v1/runs/{run25['run_id']}/rankings", headers=observer)).json()["items"])
    for r in ranks.values():
        assert r["comparable"] is False and r["rank_change"] is None
        assert "method break" in r["comparability_note"] and "merger" in r["comparability_note"]
    assert ranks["01"]["previous_rank"] == 1  # shown for reference


async def test_api_roles_errors_paging_csv_and_bring_your_own_data(stack, clients):
    import json
    from pathlib import Path

    ministry = await clients.key("ministry")
    observer = await clients.key("observer")
    province = await clients.key("province", "01")
    wave_id = await _wave(stack, clients, ministry)

    # No accepted forms yet: a final run is refused with a clear problem, not a 500.
    r = await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=ministry)
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    # Only the ministry computes final runs; unknown waves and runs are 404.
    assert (await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=observer)).status_code == 403
    assert (await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=province)).status_code == 403
    assert (await clients.indexing.post(f"/v1/waves/{uuid.uuid4()}/runs", headers=ministry)).status_code == 404
    assert (await clients.indexing.get(f"/v1/runs/{uuid.uuid4()}", headers=observer)).status_code == 404
    assert (await clients.indexing.get(f"/v1/runs/{uuid.uuid4()}/export")).status_code == 401

    forms = _province_forms("Q", {"01": 8, "02": 10})
    await publish(stack, *[accepted(uuid.UUID(wave_id), f) for f in forms])
    await _accepted_count(clients, ministry, wave_id, len(forms))
    run = (await clients.indexing.post(f"/v1/waves/{wave_id}/runs", headers=ministry)).json()
    runs = (await clients.indexing.get(f"/v1/waves/{wave_id}/runs", headers=observer)).json()["items"]
    assert [x["run_id"] for x in runs] == [run["run_id"]]

    # Paged results with filters; pages partition the filtered set.
    base = f"/v1/runs/{run['run_id']}/results"
    first = (await clients.indexing.get(base, params={"domain": "province", "limit": 7}, headers=observer)).json()
    total = first["total"]
    seen = list(first["items"])
    offset = 7
    while offset < total:
        page = await clients.indexing.get(base, params={"domain": "province", "limit": 7, "offset": offset},
                                          headers=observer)
        seen += page.json()["items"]
        offset += 7
    assert len(seen) == total and all(c["domain"] == "province" for c in seen)
    assert len({(c["domain_code"], c["indicator"], c["code"], c["weighting"]) for c in seen}) == total
    bad = await clients.indexing.get(base, params={"domain": "planet"}, headers=observer)
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")

    # CSV export: same cells, floats written exactly (repr), blanks for withheld values.
    r = await clients.indexing.get(f"{base}.csv", params={"domain": "province"}, headers=observer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == total
    row = next(x for x in rows if x["domain_code"] == "02" and x["indicator"] == "sipas" and x["weighting"] == "none")
    assert float(row["value"]) == pytest.approx(100 * 10 / 12, abs=1e-12)

    # Bring your own data: the endpoint gives the CLI's JSON for the R fixture.
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "estimation-check"
    files = {"responses": ("responses.csv", (fixture / "responses.csv").read_bytes(), "text/csv"),
             "design": ("design.json", (fixture / "design.json").read_bytes(), "application/json")}
    r = await clients.indexing.post("/v1/estimate", files=files, headers=province)
    assert r.status_code == 200, r.text
    expected = json.loads((fixture / "expected.json").read_text())
    assert r.json()["national"]["overall"]["index"] == pytest.approx(expected["national"]["overall"]["index"],
                                                                     abs=1e-9)
    assert r.json()["national"]["overall"]["se"] == pytest.approx(expected["national"]["overall"]["se"], abs=1e-6)
    broken = {**files, "responses": ("responses.csv", b"stratum,weight\nx,1\n", "text/csv")}
    r = await clients.indexing.post("/v1/estimate", files=broken, headers=province)
    assert r.status_code == 422 and "missing column" in r.json()["detail"]
    r = await clients.indexing.post("/v1/estimate", content=b"{}", headers={**province, "content-type": "application/json"})
    assert r.status_code == 422

    # Province keys read the runs of their own province's waves, nothing else: another
    # province's wave and a national wave (embargoed until publication) answer 404.
    national_run = run["run_id"]
    for path in (f"/v1/runs/{national_run}", f"/v1/runs/{national_run}/export", f"/v1/waves/{wave_id}/runs"):
        assert (await clients.indexing.get(path, headers=province)).status_code == 404, path
    own_wave, own = await _run_wave(stack, clients, ministry, 2024, _province_forms("P", {"01": 9}),
                                    province_code="01")
    other = await clients.key("province", "02")
    for path in (f"/v1/runs/{own['run_id']}", f"/v1/runs/{own['run_id']}/results",
                 f"/v1/runs/{own['run_id']}/results.csv", f"/v1/runs/{own['run_id']}/rankings",
                 f"/v1/runs/{own['run_id']}/export", f"/v1/waves/{own_wave}/runs",
                 f"/v1/waves/{own_wave}/provisional", f"/v1/waves/{own_wave}/accepted"):
        assert (await clients.indexing.get(path, headers=province)).status_code == 200, path
        assert (await clients.indexing.get(path, headers=other)).status_code == 404, path
    mine = (await clients.indexing.get(f"/v1/runs/{own['run_id']}/export", headers=province)).json()
    assert _cell(mine["cells"], "province", "01", "sipas", "sipas", "none")["value"] == pytest.approx(75.0)
    # ... and still cannot compute one.
    assert (await clients.indexing.post(f"/v1/waves/{own_wave}/runs", headers=province)).status_code == 403


async def test_a_batch_of_decisions_leaves_the_same_accepted_set_and_sums_as_one_at_a_time(stack):
    """The consumer hands ``apply_decisions`` what has queued (one transaction, sums added per
    cell): a reversal, a newer answer set, a redelivery and an older decision arriving late in
    the same batch must leave exactly what applying them one by one leaves."""
    from services.indexing import service
    from services.indexing.models import form_decision, provisional_stratum, provisional_sum
    from shared.db import transaction

    app = stack.apps["indexing"]
    rows = fixture_rows()[0][:30]
    changed = {**rows[1], "answers": {k: (v % 5) + 1 if isinstance(v, int) else v for k, v in rows[1]["answers"].items()}}

    def decisions(wave):
        return [accepted(wave, r) for r in rows] + [
            rejected(wave, rows[0]["form_code"], version=2),  # a reversal
            accepted(wave, changed, version=2),  # new answers for a form
            accepted(wave, rows[2]),  # a redelivery
            rejected(wave, rows[4]["form_code"], version=3),
            accepted(wave, rows[4], version=2),  # older than what is held by now
        ]

    one_by_one, batched = str(uuid.uuid4()), str(uuid.uuid4())
    singles = []
    for d in decisions(one_by_one):
        async with transaction(app.state.sessions) as session:
            singles.append(await service.apply_decision(session, d))
    async with transaction(app.state.sessions) as session:
        outcomes = await service.apply_decisions(session, decisions(batched))
    assert outcomes == singles == ["applied"] * 30 + ["applied", "applied", "duplicate", "applied", "older"]

    async def state(wave):
        async with app.state.sessions() as session:
            forms = (await session.execute(select(form_decision).where(form_decision.c.wave_id == wave)
                                           .order_by(form_decision.c.form_code))).mappings().all()
            sums = (await session.execute(select(provisional_sum).where(provisional_sum.c.wave_id == wave)
                                          .order_by(provisional_sum.c.stratum, provisional_sum.c.item))).mappings().all()
            strata = (await session.execute(select(provisional_stratum).where(provisional_stratum.c.wave_id == wave)
                                            .order_by(provisional_stratum.c.stratum))).mappings().all()
        drop = {"wave_id", "id", "received_at", "payload_hash"}  # the hash covers the wave id
        return ([{k: v for k, v in r.items() if k not in drop} for r in forms],
                [{k: (round(v, 9) if isinstance(v, float) else v) for k, v in r.items() if k not in drop} for r in sums],
                [{k: (round(v, 9) if isinstance(v, float) else v) for k, v in r.items() if k not in drop} for r in strata])

    a, b = await state(one_by_one), await state(batched)
    assert a == b
    forms = {r["form_code"]: r for r in b[0]}
    assert forms[rows[0]["form_code"]]["status"] == "rejected" and forms[rows[4]["form_code"]]["status"] == "rejected"
    assert forms[changed["form_code"]]["answers"] == changed["answers"]
    assert sum(r["forms"] for r in b[2]) == 28  # 30 accepted, two reversed
