"""Indexing's HTTP API: final runs, their results (paged, CSV, export for publication),
rankings, the provisional index, the accepted set, and bring-your-own-data estimation."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from services.indexing import service
from services.indexing.compute import _threadpool_limit
from services.indexing.estimation import LONELY_PSU_RULES, Design, EstimationInputError, estimate, read_responses_csv
from services.indexing.schemas import (
    AcceptedSet,
    Cell,
    CellPage,
    Domain,
    Flag,
    IndicatorKind,
    Provisional,
    Ranking,
    RankingList,
    RunCreate,
    RunExport,
    RunExportHeader,
    RunPage,
    RunRead,
    WeightingKind,
)
from shared.auth import CurrentPrincipal, Principal, Role, require_roles
from shared.errors import BadRequest, PayloadTooLarge, Problem, Unavailable, Unprocessable, problem_responses
from shared.methodology import Methodology, fetch_methodology
from shared.service import read_session, unit_of_work

router = APIRouter(prefix="/v1", tags=["indices"])

#: Largest bring-your-own-data upload (responses.csv + design.json, multipart), in bytes; above it
#: the endpoint answers 413 before parsing. 50 MB holds a national wave's CSV (~40,000 forms).
#: A constant, not a setting: the platform's settings are per service kind, shared by all five.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

WaveId = Annotated[str, Path(min_length=1, max_length=36)]
RunId = Annotated[str, Path(min_length=1, max_length=36)]
#: Readers of runs, results and the provisional index; a province key only for its own
#: province's waves (``service.ensure_results_readable``).
Reader = Annotated[Principal, Depends(require_roles(Role.ministry, Role.observer, Role.province))]
Code = Annotated[str | None, Query(max_length=160)]


async def _methodology(request: Request, methodology_id: str) -> Methodology:
    """The wave's methodology version from the survey service (cached). Anything but a clean
    answer from survey is a 503 here, never a 500."""
    try:
        return await fetch_methodology(request.app, methodology_id)
    except Problem:
        raise
    except (httpx.HTTPError, ValueError) as exc:
        raise Unavailable(f"Methodology {methodology_id} cannot be read from the survey service.") from exc


def _run_read(run: dict[str, Any]) -> RunRead:
    return RunRead(run_id=run["id"], **{k: v for k, v in run.items() if k != "id"})


@router.post("/waves/{wave_id}/runs", response_model=RunRead, status_code=201, summary="Compute a final run",
             responses=problem_responses(503))
async def create_run(
    wave_id: WaveId,
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry))],
    body: RunCreate | None = None,
) -> RunRead:
    """Computes every cell from the wave's accepted set as it is now, stores the run (immutable)
    and emits ``index.run.completed``. The same accepted set gives the same numbers."""
    async with read_session(request) as session:
        w = await service.get_wave(session, principal, wave_id)
        rows = await service.accepted_rows(session, wave_id)
        sizes = await service.frame_sizes(session, wave_id)
    methodology = await _methodology(request, w["methodology_version"])
    async with unit_of_work(request) as session:
        run = await service.create_final_run(session, principal, w, methodology, rows, sizes)
    return _run_read(run)


@router.get("/waves/{wave_id}/runs", response_model=RunPage, summary="Runs of a wave, oldest first")
async def list_runs(wave_id: WaveId, request: Request, principal: Reader) -> RunPage:
    async with read_session(request) as session:
        await service.get_wave(session, principal, wave_id)
        return RunPage(items=[_run_read(r) for r in await service.list_runs(session, wave_id)])


@router.get("/waves/{wave_id}/accepted", response_model=AcceptedSet, summary="The accepted set: size and fingerprint")
async def accepted_set(wave_id: WaveId, request: Request, principal: Reader) -> AcceptedSet:
    async with read_session(request) as session:
        await service.get_wave(session, principal, wave_id)
        return AcceptedSet(**await service.accepted_summary(session, wave_id))


@router.get("/waves/{wave_id}/provisional", response_model=Provisional, summary="Provisional index",
            responses=problem_responses(503))
async def provisional(
    wave_id: WaveId,
    request: Request,
    principal: Reader,
    domain: Annotated[str, Query(pattern="^(nation|province|level|field)$")] = "nation",
) -> Provisional:
    """Item to SIPAS indices from the running sums, updated as decisions arrive (no SE)."""
    async with read_session(request) as session:
        w = await service.get_wave(session, principal, wave_id)
    methodology = await _methodology(request, w["methodology_version"])
    async with read_session(request) as session:
        return Provisional(**await service.provisional(session, w, methodology, domain))


@router.get("/runs/{run_id}", response_model=RunRead, summary="A run: what it used and produced")
async def get_run(run_id: RunId, request: Request, principal: Reader) -> RunRead:
    async with read_session(request) as session:
        return _run_read(await service.get_run(session, principal, run_id))


def _filters(domain, domain_code, indicator, code, weighting, flag) -> dict[str, Any]:
    return {"domain": domain, "domain_code": domain_code, "indicator": indicator, "code": code,
            "weighting": weighting, "flag": flag}


@router.get("/runs/{run_id}/results", response_model=CellPage, summary="Results by domain, paged")
async def results(
    run_id: RunId,
    request: Request,
    principal: Reader,
    domain: Domain | None = None,
    domain_code: Code = None,
    indicator: IndicatorKind | None = None,
    code: Code = None,
    weighting: WeightingKind | None = None,
    flag: Flag | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> CellPage:
    async with read_session(request) as session:
        await service.get_run(session, principal, run_id)
        items, total = await service.cells(session, run_id, _filters(domain, domain_code, indicator, code,
                                                                     weighting, flag), limit, offset)
    return CellPage(items=[Cell(**c) for c in items], total=total, limit=limit, offset=offset)


@router.get("/runs/{run_id}/results.csv", summary="Results as CSV (same filters)", response_class=Response,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
async def results_csv(
    run_id: RunId,
    request: Request,
    principal: Reader,
    domain: Domain | None = None,
    domain_code: Code = None,
    indicator: IndicatorKind | None = None,
    code: Code = None,
    weighting: WeightingKind | None = None,
    flag: Flag | None = None,
) -> Response:
    async with read_session(request) as session:
        await service.get_run(session, principal, run_id)
        items, _ = await service.cells(session, run_id, _filters(domain, domain_code, indicator, code, weighting,
                                                                 flag))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=service.CELL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in items:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in c.items()})
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="sipas-run-{run_id}.csv"'})


@router.get("/runs/{run_id}/rankings", response_model=RankingList, summary="Provinces ranked by SIPAS and elements")
async def rankings(
    run_id: RunId,
    request: Request,
    principal: Reader,
    indicator: Annotated[str | None, Query(max_length=40)] = None,
) -> RankingList:
    async with read_session(request) as session:
        await service.get_run(session, principal, run_id)
        return RankingList(items=[Ranking(**r) for r in await service.run_rankings(session, run_id, indicator)])


@router.get("/runs/{run_id}/export", response_model=RunExport, summary="A run's full results (for publication)")
async def export(run_id: RunId, request: Request, principal: Reader) -> RunExport:
    """Everything publication copies at draft-release creation: the run, every cell, rankings."""
    async with read_session(request) as session:
        run = await service.get_run(session, principal, run_id)
        items, _ = await service.cells(session, run_id, {})
        ranks = await service.run_rankings(session, run_id)
    header = RunExportHeader(run_id=run["id"], **{k: run[k] for k in RunExportHeader.model_fields if k != "run_id"})
    return RunExport(run=header, cells=[Cell(**c) for c in items], rankings=[Ranking(**r) for r in ranks])


# --------------------------------------------------------------------------------------------------
# Bring your own data
# --------------------------------------------------------------------------------------------------

_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["responses", "design"],
            "properties": {
                "responses": {"type": "string", "format": "binary",
                              "description": "responses.csv (format of tests/fixtures/estimation-check)"},
                "design": {"type": "string", "format": "binary", "description": "design.json"},
            },
        }}},
    }
}


@router.post("/estimate", summary="Estimate indices from your own files (like the CLI)", tags=["estimate"],
             response_model=dict[str, Any], openapi_extra=_MULTIPART, responses=problem_responses(413, 415))
async def estimate_upload(
    request: Request,
    principal: CurrentPrincipal,
    lonely_psu: Annotated[str | None, Query(pattern="^(adjust|certainty|fail)$")] = None,
) -> dict[str, Any]:
    """``responses.csv`` + ``design.json`` (multipart) → the JSON of
    ``python -m services.indexing estimate`` (shape of expected.json). Nothing is stored."""
    cap = MAX_UPLOAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"Uploads are limited to {cap} bytes.")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Unprocessable("Send multipart/form-data with the files 'responses' and 'design'.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLarge(f"Uploads are limited to {cap} bytes.")
    request._body = bytes(body)  # let Starlette parse the form from what was read
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart
        raise BadRequest(f"The multipart body cannot be read: {type(exc).__name__}.") from exc
    files = {}
    for name in ("responses", "design"):
        part = form.get(name)
        if part is None or isinstance(part, str):
            raise Unprocessable(f"Missing file '{name}'.")
        files[name] = await part.read()
    try:
        try:
            design = Design.from_dict(json.loads(files["design"].decode("utf-8-sig")), source="design.json")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EstimationInputError(f"design.json: not valid UTF-8 JSON ({exc})") from exc
        data = io.BytesIO(files["responses"])
        data.name = "responses.csv"
        responses = read_responses_csv(data, design.items)
        def run() -> dict[str, Any]:
            with _threadpool_limit():
                return estimate(responses, design, lonely_psu=lonely_psu)

        return await asyncio.to_thread(run)
    except EstimationInputError as exc:
        raise Unprocessable(exc.message) from exc


__all__ = ["router", "LONELY_PSU_RULES"]
