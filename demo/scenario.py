"""A national wave played through the public HTTP APIs, as the real actors would play it.

Every step is an HTTP call a real user makes with their own key: provincial portals push frames,
the ministry designs and draws the sample, Vietnam Post pulls assignments and pushes results,
citizens answer online, provincial teams record back-checks, the ministry runs the final index
and publishes it. The scenario never touches a database or the bus; the only thing it does as
an operator is issue the actors' API keys (``services.keys``, what ``python -m services keys
issue`` does).

Re-running is safe and adds nothing: the wave is found by its code, batches keep their ids (a
replayed batch is a no-op), forms already answered are skipped, a final run and its release are
reused. Everything random comes from ``demo.data`` and the seed, so a re-run publishes the same
figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from demo import data
from demo.data import DemoConfig
from shared.methodology import Methodology

SERVICES = ("sampling", "survey", "verification", "indexing", "publication")


class DemoError(RuntimeError):
    """A step did not go as a real user would expect; the message says which and why."""


class Progress:
    """What the scenario reports as it goes; the CLI draws bars, tests stay quiet."""

    def stage(self, name: str) -> None: ...

    def task(self, description: str, total: int | None) -> Callable[..., None]:
        """An ``advance(n, total=None)`` callable; ``total`` grows the bar (replacement forms
        arrive while fieldwork runs)."""
        return lambda n, total=None: None

    def note(self, text: str) -> None: ...


@dataclass
class Actors:
    """An httpx client per service and the keys of the people and systems acting."""

    clients: dict[str, httpx.AsyncClient]
    keys: dict[str, str]  # "ministry", "observer", "vnpost", "portal:01", "province:01"

    def h(self, who: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[who]}


@dataclass
class Report:
    wave_id: str = ""
    wave_code: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    national: list[dict[str, Any]] = field(default_factory=list)
    provinces: list[dict[str, Any]] = field(default_factory=list)
    rankings: list[dict[str, Any]] = field(default_factory=list)

    def headline(self) -> dict[str, Any] | None:
        """The national SIPAS as the methodology publishes it (official = unweighted)."""
        sipas = [f for f in self.national if f["indicator"] == "sipas" and f["weighting"] == "none"]
        return sipas[0] if sipas else None
    release_id: str = ""
    run_id: str = ""


async def _ok(response: httpx.Response, *expected: int) -> Any:
    expected = expected or (200,)
    if response.status_code not in expected:
        raise DemoError(f"{response.request.method} {response.request.url.path} answered "
                        f"{response.status_code}: {response.text[:600]}")
    return response.json() if response.content and "json" in response.headers.get("content-type", "") else None


# How long a wait may see no change at all before the demo gives up. Events cross services
# asynchronously and, at the national size, tens of thousands of them queue behind each other
# in the outboxes: a fixed deadline either fails a healthy wave or hides a stuck one, while
# "nothing moved for this long" means stuck on any machine.
STALL_SECONDS = 300.0


async def _eventually(check: Callable[[], Awaitable[Any]], what: str, stall: float = STALL_SECONDS,
                      interval: float = 0.2, max_interval: float = 2.0,
                      activity: Callable[[], Awaitable[Any]] | None = None) -> Any:
    """Events travel asynchronously between services: wait for their effect, say what we waited for.

    ``check`` returns either a plain truth value, or ``(done, state)`` where ``state`` is what
    it saw (counts): the wait gives up only after ``state`` (and ``activity``, e.g. how many
    events the services have handled) stayed the same for ``stall`` seconds. The polling
    interval grows to ``max_interval`` because every poll is a request the busy stack must
    answer too."""
    deadline = time.monotonic() + stall
    last: Any = object()
    while True:
        try:
            result = await check()
        except httpx.TransportError:  # a busy stack dropped a keep-alive connection: ask again
            result = False
        done, state = result if isinstance(result, tuple) else (result, None)
        if done:
            return result
        if activity is not None:
            state = (state, await activity())
        if state is not None and state != last:
            last, deadline = state, time.monotonic() + stall
        if time.monotonic() > deadline:
            raise DemoError(f"gave up waiting for {what}: nothing changed for {stall:.0f} s (last seen: {last})")
        await asyncio.sleep(interval)
        interval = min(max_interval, interval * 1.5)


def batch_id(wave_code: str, kind: str, records: list[dict]) -> str:
    """A batch's id from its content: a re-run (or a resumed run) sends the same forms under the
    same id, which the service recognises as a replay, whatever way the forms were split into
    rounds by the timing of replacements."""
    digest = hashlib.sha256("\n".join(sorted(r["form_code"] for r in records)).encode()).hexdigest()[:16]
    return f"{wave_code}-{kind}-{digest}"


def enumerator_for(province: str, place: str) -> str:
    """Vietnam Post's enumerator for a unit, from the unit's place in its stratum's lists: 20
    sampled units each (000, 001, ...), reserves from 500 on. A pure function, so the same
    units get the same enumerator whichever pull brought their form."""
    _stratum, role, order = place.rsplit("/", 2)
    return f"VNP-{province}-{int(order) // 20 + (0 if role == 'sample' else 500):03d}"


class Scenario:
    def __init__(self, cfg: DemoConfig, actors: Actors, progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.a = actors
        self.p = progress or Progress()
        self.report = Report(wave_code=cfg.wave_code)
        self.methodology: Methodology | None = None
        self.provinces: list[str] = []
        self.communes: dict[str, list[str]] = {}
        self.wave: dict[str, Any] = {}
        self.fraud_enumerator = ""
        # unit_id → "stratum/role/order": unit ids are fixed per draw, and a draw id is new in
        # every wave, but a unit's place in its stratum's lists is the same for the same frame,
        # design and seed. Behaviour keyed on it makes a re-run (or another backend) identical.
        self.place: dict[str, str] = {}
        self.fraud_forms: set[str] = set()

    @property
    def c(self) -> dict[str, httpx.AsyncClient]:
        return self.a.clients

    async def _events_handled(self) -> float | None:
        """Events handled so far by every service's consumers (their ``/metrics``): while it
        grows, the services are working through the backlog the demo is waiting on, even when
        no count the demo asks for has moved yet."""
        total = 0.0
        for client in self.c.values():
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get("/metrics")
                for line in r.text.splitlines():
                    if line.startswith("sipas_events_consumed_total{"):
                        total += float(line.rsplit(" ", 1)[1])
        return total

    async def _wait(self, check: Callable[[], Awaitable[Any]], what: str) -> Any:
        return await _eventually(check, what, activity=self._events_handled)

    async def play(self) -> Report:
        stages = [
            ("frames", self.frames),
            ("sample", self.sample),
            ("fieldwork", self.fieldwork),
            ("verification", self.verification),
            ("indexing", self.indexing),
            ("publication", self.publication),
        ]
        await self.setup()
        for name, step in stages:
            self.p.stage(name)
            started = time.perf_counter()
            await step()
            self.report.stage_seconds[name] = time.perf_counter() - started
            self.p.note(f"{name} took {self.report.stage_seconds[name]:.1f} s")
        return self.report

    # ------------------------------------------------------------------ set-up
    async def setup(self) -> None:
        body = await _ok(await self.c["survey"].get(f"/v1/methodologies/{self.cfg.methodology}", headers=self.a.h("ministry")))
        self.methodology = Methodology.model_validate(body)
        units = await self._all(self.c["sampling"], "/v1/units", {"level": "province"}, "ministry")
        provinces = sorted(u["code"] for u in units)
        if self.cfg.provinces:
            provinces = [p for p in provinces if p in self.cfg.provinces]
        self.provinces = provinces
        communes = await self._all(self.c["sampling"], "/v1/units", {"level": "commune"}, "ministry")
        by_province: dict[str, list[str]] = defaultdict(list)
        for u in communes:
            by_province[u["province_code"]].append(u["code"])
        self.communes = {p: sorted(by_province[p]) for p in provinces}
        fraud_province = provinces[self.cfg.fraud_province_index % len(provinces)]
        self.fraud_enumerator = f"VNP-{fraud_province}-000"

    async def _all(self, client: httpx.AsyncClient, path: str, params: dict, who: str, limit: int = 1000) -> list[dict]:
        items: list[dict] = []
        offset = 0
        while True:
            page = await _ok(await client.get(path, params={**params, "limit": limit, "offset": offset}, headers=self.a.h(who)))
            items.extend(page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items

    # ------------------------------------------------------------------ frames
    async def frames(self) -> None:
        s = self.c["sampling"]
        found = await _ok(await s.get("/v1/waves", params={"limit": 500}, headers=self.a.h("ministry")))
        wave = next((w for w in found["items"] if w["code"] == self.cfg.wave_code), None)
        if wave is None:
            wave = await _ok(await s.post("/v1/waves", headers=self.a.h("ministry"), json={
                "code": self.cfg.wave_code, "name": f"SIPAS {self.cfg.year} (demo, seed {self.cfg.seed})",
                "scope": "national", "year": self.cfg.year, "methodology_version": self.cfg.methodology,
                "fieldwork_start": f"{self.cfg.year}-08-01", "fieldwork_end": f"{self.cfg.year}-10-31",
                "seed": self.cfg.seed,
            }), 201)
        self.wave = wave
        self.report.wave_id = wave["id"]
        if wave["status"] == "draft":
            self.wave = await _ok(await s.patch(f"/v1/waves/{wave['id']}", headers=self.a.h("ministry"),
                                                json={"status": "frame_open", "reason": "portals may push frames"}))
        if self.wave["status"] != "frame_open":
            self.p.note(f"wave {self.cfg.wave_code} is {self.wave['status']}: frames already in")
            return
        sizes = data.frame_sizes(self.cfg, self.provinces)
        advance = self.p.task("portals push frames", sum(sizes.values()))
        sem = asyncio.Semaphore(2)

        async def portal(province: str) -> None:
            async with sem:
                batch: list[dict] = []
                k = 0
                for record in data.frame_records(self.cfg, province, self.communes[province], sizes[province]):
                    batch.append(record)
                    if len(batch) == self.cfg.frame_batch_size:
                        await self._push_frame(province, k, batch)
                        advance(len(batch))
                        batch, k = [], k + 1
                if batch:
                    await self._push_frame(province, k, batch)
                    advance(len(batch))

        await asyncio.gather(*(portal(p) for p in self.provinces))
        frame = await _ok(await s.post(f"/v1/waves/{wave['id']}/frame/close", headers=self.a.h("ministry"), json={}))
        self.report.counts["frame records"] = frame.get("records", sum(sizes.values()))

    async def _push_frame(self, province: str, k: int, records: list[dict]) -> None:
        r = await self.c["sampling"].post(
            f"/v1/waves/{self.wave['id']}/frame/batches", headers=self.a.h(f"portal:{province}"),
            json={"batch_id": f"{self.cfg.wave_code}-{province}-{k:05d}", "kind": "transaction", "records": records})
        report = await _ok(r)
        if report["rejected"]:
            raise DemoError(f"province {province} batch {k}: {report['rejected']} records rejected: {report['errors'][:3]}")

    # ------------------------------------------------------------------ sample
    async def sample(self) -> None:
        s, wid = self.c["sampling"], self.wave["id"]
        current = await s.get(f"/v1/waves/{wid}/draw", headers=self.a.h("ministry"))
        if current.status_code == 404:
            design = {"method": "stratified", "strata_by": ["province_code"], "sizing": "allocate",
                      "total": self.cfg.sample_size, "allocation": "proportional",
                      "minimum_per_stratum": max(10, self.cfg.sample_size // (4 * len(self.provinces))),
                      "reserve_share": self.methodology.reserve_share}
            await _ok(await s.put(f"/v1/waves/{wid}/design", headers=self.a.h("ministry"), json=design))
            preview = await _ok(await s.post(f"/v1/waves/{wid}/design/preview", headers=self.a.h("ministry"), json=design))
            self.p.note(f"design preview: {preview['n']} units + {preview['n_reserve']} reserves in {len(preview['strata'])} strata")
            draw = await _ok(await s.post(f"/v1/waves/{wid}/draw", headers=self.a.h("ministry")), 201)
        else:
            draw = await _ok(current)
        self.report.counts["sampled units"] = sum(st["n"] for st in draw.get("strata", [])) or draw.get("n", 0)
        self.p.note(f"sample hash {draw['sample_hash'][:16]}… (observers can verify it with the seed)")
        units = await self._all(s, f"/v1/waves/{wid}/sample", {}, "ministry", limit=5000)
        self.place = {u["unit_id"]: f"{u['stratum']}/{u['role']}/{u['order']}" for u in units}
        wave = await _ok(await s.get(f"/v1/waves/{wid}", headers=self.a.h("ministry")))
        if wave["status"] == "sampled":
            wave = await _ok(await s.patch(f"/v1/waves/{wid}", headers=self.a.h("ministry"),
                                           json={"status": "in_field", "reason": "fieldwork starts"}))
        self.wave = wave

    # ------------------------------------------------------------------ fieldwork
    async def fieldwork(self) -> None:
        """Vietnam Post's round trip: pull the assignments, deliver, push what happened.

        Delivery first: a refusal or an unreachable address is known at the door, so Vietnam
        Post reports those at once and pulls the replacement forms sampling releases from the
        reserve lists (which may be refused in turn), until every such unit is replaced or its
        stratum's reserve is out. Answers come back afterwards, in batches of up to 5,000 from
        Vietnam Post while citizens answer online. Events leave each service in order, so
        replacements requested after tens of thousands of answers would wait behind all of
        their events; reported first, they take seconds."""
        sv, wid = self.c["survey"], self.wave["id"]
        expected = self.report.counts["sampled units"]
        started = time.perf_counter()
        await self._wait(lambda: self._forms_known(expected), f"{expected} forms in the survey service")
        self.p.note(f"{expected:,} forms created by the survey service after {time.perf_counter() - started:.1f} s")
        cursor, seen, total, rounds = 0, set(), expected, 0
        advance = self.p.task("Vietnam Post and citizens", expected)
        answering: list[dict] = []
        started = time.perf_counter()
        while True:
            new, cursor = await self._pull(cursor)
            fresh = [f for f in new if f["status"] == "assigned" and f["form_code"] not in seen]
            seen.update(f["form_code"] for f in new)
            if fresh:
                if len(seen) > total:
                    total = len(seen)
                    advance(0, total=total)
                rounds += 1
                await self._assign(fresh)
                answering += await self._deliver(fresh, advance)
                continue
            # Nothing new to deliver: done when every refused or unreachable form has been
            # replaced (or its stratum's reserve ran out); else wait for the replacements.
            settled = await self._wait(lambda: self._replacements_or_new_forms(len(answering)),
                                        "replacement forms from the reserve lists")
            if settled[0] == "settled":
                break
        self.p.note(f"delivery: {len(seen):,} forms in {rounds} pulls, refusals replaced, "
                    f"in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        await self._answers(answering, advance)
        self.p.note(f"answers: {len(answering):,} forms in {time.perf_counter() - started:.1f} s")
        progress = await _ok(await sv.get(f"/v1/progress/{wid}", headers=self.a.h("ministry")))
        self.report.counts.update({f"forms {k}": v for k, v in progress.get("totals", {}).items() if isinstance(v, int)})

    async def _forms_known(self, expected: int) -> tuple[bool, int]:
        r = await self.c["survey"].get("/v1/forms", params={"wave_id": self.wave["id"], "limit": 1}, headers=self.a.h("ministry"))
        total = r.json()["total"] if r.status_code == 200 else -1
        return total >= expected, total

    async def _replacements_or_new_forms(self, waiting: int) -> tuple[str | bool, tuple]:
        """``waiting``: forms already pulled that wait, assigned, for their answers."""
        progress = await _ok(await self.c["survey"].get(f"/v1/progress/{self.wave['id']}", headers=self.a.h("ministry")))
        t = progress["totals"]
        state = tuple(sorted((k, v) for k, v in t.items() if isinstance(v, int)))
        if t["assigned"] > waiting:
            return "new forms", state
        # A refused / unreachable / ineligible form moves to "replaced" once its replacement
        # form exists; it stays where it is when its stratum's reserve is out.
        if t["refused"] + t["unreachable"] + t["ineligible"] <= t["reserve_exhausted"]:
            return "settled", state
        return False, state

    async def _pull(self, cursor: int) -> tuple[list[dict], int]:
        items: list[dict] = []
        while True:
            page = await _ok(await self.c["survey"].get("/v1/vnpost/assignments", headers=self.a.h("vnpost"),
                                                        params={"wave_id": self.wave["id"], "since": cursor, "limit": 5000}))
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return items, cursor

    async def _assign(self, forms: list[dict]) -> None:
        assignments = []
        for f in forms:
            if f["enumerator_id"]:
                continue
            province = f["province_code"]
            f["enumerator_id"] = enumerator_for(province, self.place[f["unit_id"]])
            assignments.append({"form_code": f["form_code"], "post_office": f"BC-{province}",
                                "enumerator_id": f["enumerator_id"]})
        assignments.sort(key=lambda a: a["form_code"])
        for start in range(0, len(assignments), 5000):
            await _ok(await self.c["survey"].post("/v1/forms/assign", headers=self.a.h("ministry"),
                                                  json={"wave_id": self.wave["id"], "assignments": assignments[start:start + 5000]}))

    async def _deliver(self, forms: list[dict], advance: Callable[..., None]) -> list[dict]:
        """Report the refused and unreachable forms among ``forms``; return the others."""
        doomed, others = [], []
        for f in sorted(forms, key=lambda f: f["form_code"]):
            out = None
            if f["enumerator_id"] != self.fraud_enumerator:
                out = data.field_outcome(self.cfg, self.methodology, self.place[f["unit_id"]], f["province_code"])
            if out is not None and out.kind in ("refused", "unreachable"):
                doomed.append({"form_code": f["form_code"], "status": out.kind, "enumerator_id": f["enumerator_id"],
                               "replacement_reason": "refused" if out.kind == "refused" else "unreachable"})
            else:
                others.append(f)
        await self._batches("status", "dispatch", self._dispatched(doomed))
        await self._batches("status", "outcomes", doomed)
        advance(len(doomed))
        return others

    @staticmethod
    def _dispatched(forms: list[dict]) -> list[dict]:
        return [{"form_code": f["form_code"], "status": "dispatched", "enumerator_id": f["enumerator_id"]} for f in forms]

    async def _answers(self, forms: list[dict], advance: Callable[..., None]) -> None:
        """Paper answers through Vietnam Post's batches, online answers from the citizens, at once."""
        m = self.methodology
        paper, online = [], []
        for f in sorted(forms, key=lambda f: f["form_code"]):
            if f["enumerator_id"] == self.fraud_enumerator:
                self.fraud_forms.add(f["form_code"])
                paper.append({"form_code": f["form_code"], "answers": data.fraudulent_answers(m),
                              "enumerator_id": f["enumerator_id"], "duration_seconds": 40.0})
                continue
            out = data.field_outcome(self.cfg, m, self.place[f["unit_id"]], f["province_code"])
            if out.kind == "online":
                online.append((f, out))
            else:
                paper.append({"form_code": f["form_code"], "answers": out.answers, "enumerator_id": f["enumerator_id"],
                              "duration_seconds": out.duration_seconds})
        await self._batches("status", "dispatch", self._dispatched(forms))
        await asyncio.gather(self._online(online, advance), self._batches("answers", "answers", paper, advance))

    async def _batches(self, kind: str, name: str, records: list[dict], advance: Callable[..., None] | None = None) -> None:
        path = "/v1/vnpost/status-batches" if kind == "status" else "/v1/vnpost/answer-batches"
        for start in range(0, len(records), self.cfg.batch_size):
            chunk = records[start:start + self.cfg.batch_size]
            bid = batch_id(self.cfg.wave_code, name, chunk)
            result = await _ok(await self.c["survey"].post(path, headers=self.a.h("vnpost"), json={
                "batch_id": bid, "wave_id": self.wave["id"], "records": chunk}))
            bad = [r for r in result["records"] if r["outcome"] in ("conflict", "rejected")]
            if bad:
                raise DemoError(f"Vietnam Post batch {bid}: {len(bad)} records refused, e.g. {bad[:2]}")
            if advance is not None:
                advance(len(chunk))

    async def _online(self, online: list[tuple[dict, data.Outcome]], advance: Callable[..., None] | None = None) -> None:
        """Citizens answer on the web, each from their own address (sent as X-Forwarded-For, as
        the reverse proxy in front of the service would; uvicorn trusts it from localhost only),
        many at once as real citizens do, bounded so the demo does not become a load test."""
        sem = asyncio.Semaphore(16)

        async def answer(f: dict, out: data.Outcome, i: int) -> None:
            async with sem:
                address = {"X-Forwarded-For": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"}
                path = f"/v1/online/forms/{f['form_code']}"
                await _ok(await self._polite(lambda: self.c["survey"].get(path, headers=address)))
                r = await self._polite(lambda: self.c["survey"].post(f"{path}/response", headers=address,
                                                                     json={"answers": out.answers}))
                if r.status_code != 409:  # 409: answered in an earlier run of the demo
                    await _ok(r, 201)
                if advance is not None:
                    advance(1)

        await asyncio.gather(*(answer(f, out, i) for i, (f, out) in enumerate(online)))
        self.report.counts["answered online"] = self.report.counts.get("answered online", 0) + len(online)

    @staticmethod
    async def _polite(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """Anonymous endpoints are rate-limited: wait as long as Retry-After says, then retry."""
        while True:
            r = await send()
            if r.status_code != 429:
                return r
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    # ------------------------------------------------------------------ verification
    async def verification(self) -> None:
        v, wid = self.c["verification"], self.wave["id"]
        await self._wait(self._screened, "verification to screen every returned form")
        await self._review_flagged()
        advance = self.p.task("provincial back-checks (phúc tra)", None)
        for province in self.provinces:
            r = await v.post(f"/v1/waves/{wid}/back-check-draws", headers=self.a.h(f"province:{province}"),
                             json={"province_code": province, "seed": self.cfg.seed})
            if r.status_code != 409:  # 409: drawn in an earlier run
                await _ok(r, 201)
        # 34 provincial teams call respondents back at the same time, each team one call after
        # the other (a team's outcomes of one enumerator's forms can escalate that enumerator;
        # two such outcomes at once made PostgreSQL detect a deadlock in verification).
        async def team(province: str) -> None:
            who = self.a.h(f"province:{province}")
            while True:
                listing = await _ok(await v.get(f"/v1/waves/{wid}/back-checks", headers=who,
                                                params={"province_code": province, "pending": "true", "limit": 500,
                                                        "with_contacts": "true"}))
                todo = [item for item in listing["items"] if item["outcome"] is None]
                if not todo:
                    return

                for item in todo:
                    outcome = data.back_check_result(self.cfg, item["form_code"] in self.fraud_forms,
                                                     self.place.get(item["unit_id"], item["form_code"]))
                    await _ok(await v.post(f"/v1/waves/{wid}/back-checks/{item['form_code']}/outcome",
                                           headers=who, json={"outcome": outcome}))
                    advance(1)

        await asyncio.gather(*(team(p) for p in self.provinces))
        totals = await self._quality()
        for key in ("returned", "valid", "rejected", "flagged", "back_checked", "denied"):
            self.report.counts[f"forms {key}"] = totals[key]

    async def _quality(self) -> dict[str, int]:
        """Verification's quality report summed over provinces."""
        report = await _ok(await self.c["verification"].get(f"/v1/waves/{self.wave['id']}/quality",
                                                            headers=self.a.h("ministry"), params={"by": "province"}))
        totals: Counter = Counter()
        for row in report["rows"]:
            totals.update({k: v for k, v in row.items() if isinstance(v, int)})
        return totals

    async def _review_flagged(self) -> None:
        """Flagged forms (straight-lining, too fast online) wait for a reviewer. The ministry's
        reviewer accepts them with a comment: a flag is a reason to look, not to reject; the
        back-check decides whether the respondent really answered."""
        v, wid = self.c["verification"], self.wave["id"]
        reviewers = asyncio.Semaphore(8)

        async def review(form: dict) -> None:
            async with reviewers:
                await _ok(await v.post(f"/v1/waves/{wid}/forms/{form['form_code']}/review", headers=self.a.h("ministry"),
                                       json={"action": "accept", "comment": "Đã xem xét: cờ cảnh báo không đủ để loại phiếu."}))

        while True:
            page = await _ok(await v.get(f"/v1/waves/{wid}/forms", headers=self.a.h("ministry"),
                                         params={"state": "has_issues", "limit": 500}))
            if not page["items"]:
                return
            await asyncio.gather(*(review(form) for form in page["items"]))

    async def _screened(self) -> tuple[bool, tuple]:
        progress = await _ok(await self.c["survey"].get(f"/v1/progress/{self.wave['id']}", headers=self.a.h("ministry")))
        collected = progress["totals"]["collected"]
        q = await self._quality()
        state = (collected, q["returned"], q["valid"], q["rejected"], q["flagged"])
        return q["returned"] >= collected and q["valid"] + q["rejected"] + q["flagged"] >= q["returned"], state

    # ------------------------------------------------------------------ indexing
    async def indexing(self) -> None:
        ix, wid = self.c["indexing"], self.wave["id"]
        valid = (await self._quality())["valid"]
        await self._wait(lambda: self._accepted_reached(valid), f"{valid} accepted forms in indexing")
        runs = await _ok(await ix.get(f"/v1/waves/{wid}/runs", headers=self.a.h("ministry")))
        final = [r for r in runs["items"] if r.get("kind", "final") == "final"]
        run = final[-1] if final else await _ok(await ix.post(f"/v1/waves/{wid}/runs", headers=self.a.h("ministry"),
                                                              json={"reason": "final run of the demo wave"}), 201)
        self.report.run_id = run["id"] if "id" in run else run["run_id"]

    async def _accepted_reached(self, valid: int) -> tuple[bool, int]:
        got = await _ok(await self.c["indexing"].get(f"/v1/waves/{self.wave['id']}/accepted", headers=self.a.h("ministry")))
        return got["accepted_forms"] == valid, got["accepted_forms"]

    # ------------------------------------------------------------------ publication
    async def publication(self) -> None:
        pub = self.c["publication"]
        await self._wait(self._run_announced, "the final run to reach publication")
        releases = await _ok(await pub.get("/v1/releases", headers=self.a.h("ministry")))
        release = next((r for r in releases["items"] if any(v.get("run_id") == self.report.run_id for v in r["versions"])), None)
        if release is None:
            release = await _ok(await pub.post("/v1/releases", headers=self.a.h("ministry"),
                                               json={"run_id": self.report.run_id}), 201)
        self.report.release_id = release["id"]
        version = release["versions"][-1]
        if version["status"] in ("draft",):
            await _ok(await pub.post(f"/v1/releases/{release['id']}/versions/{version['version']}/comments",
                                     headers=self.a.h("observer"), json={"text": "Mặt trận Tổ quốc: đã giám sát, không có ý kiến khác."}), 201)
            await _ok(await pub.post(f"/v1/releases/{release['id']}/versions/{version['version']}/approve",
                                     headers=self.a.h("ministry"), json={}))
            version = await _ok(await pub.post(f"/v1/releases/{release['id']}/versions/{version['version']}/publish",
                                               headers=self.a.h("ministry"), json={}))
        elif version["status"] == "approved":
            version = await _ok(await pub.post(f"/v1/releases/{release['id']}/versions/{version['version']}/publish",
                                               headers=self.a.h("ministry"), json={}))
        national = await _ok(await pub.get(f"/v1/public/releases/{release['id']}/national"))
        provinces = await _ok(await pub.get(f"/v1/public/releases/{release['id']}/provinces", params={"limit": 100}))
        rankings = await _ok(await pub.get(f"/v1/public/releases/{release['id']}/rankings", params={"limit": 100}))
        self.report.national = national["items"]
        self.report.provinces = provinces["items"]
        self.report.rankings = rankings["items"]

    async def _run_announced(self) -> bool:
        runs = await _ok(await self.c["publication"].get("/v1/runs", headers=self.a.h("ministry")))
        return any(r.get("run_id", r.get("id")) == self.report.run_id for r in runs["items"])


def summary_counts(report: Report) -> Counter:
    return Counter(report.counts)


class RetryBusy(httpx.AsyncBaseTransport):
    """Send a request again when a service answers 503 with Retry-After (its database was busy:
    a deadlock, a lock wait, no free connection — nothing was stored) or the connection dropped,
    as Vietnam Post's and the portals' systems are expected to. Every request the actors send is
    idempotent (batch ids, one outcome per form), so a retry never doubles an effect."""

    def __init__(self, inner: httpx.AsyncBaseTransport, attempts: int = 8) -> None:
        self.inner = inner
        self.attempts = attempts

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                if attempt == self.attempts:
                    raise
                await asyncio.sleep(min(0.5 * attempt, 5.0))
                continue
            if response.status_code != 503 or "Retry-After" not in response.headers or attempt == self.attempts:
                return response
            await response.aread()
            await response.aclose()
            await asyncio.sleep(min(float(response.headers["Retry-After"]) * attempt, 10.0))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def http_actors(urls: dict[str, str], keys: dict[str, str], transports: dict[str, Any] | None = None):
    """Clients for the five services: real URLs, or in-process ASGI transports (tests)."""
    clients = {
        name: httpx.AsyncClient(base_url=urls[name], timeout=300.0,
                                transport=RetryBusy((transports or {}).get(name) or httpx.AsyncHTTPTransport()))
        for name in SERVICES
    }
    try:
        yield Actors(clients, keys)
    finally:
        for client in clients.values():
            await client.aclose()
