"""The documents in docs/ checked against the code they describe.

Settings, problem types, roles, ports, the event envelope and file paths are facts the code owns;
these tests fail when the code changes and the documents did not follow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.auth import Role
from shared.contracts import sampling  # noqa: F401  (registers the contracts)
from shared.errors import problem_type
from shared.events import CONTRACTS, Envelope
from shared.settings import DEFAULT_PORTS, SERVICES, PlatformSettings, ServiceSettings
from tests.platform.test_compose import NON_SETTINGS, flat_fields, settings_by_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = ("architecture.md", "run-modes.md", "configuration.md", "events.md", "api.md")
# A SIPAS variable as written in the docs, with <SERVICE> or <NAME> standing for a service.
DOC_VAR = re.compile(r"SIPAS_(?:[A-Z0-9]+_|<[A-Z]+>_)*(?:[A-Z0-9]+|<[A-Z]+>)?")


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell (backticks stripped)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def documented_default(value) -> str:
    """How configuration.md writes a default."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


@pytest.mark.parametrize("page", PAGES)
def test_page_exists(page):
    assert (DOCS / page).is_file()


def test_configuration_lists_every_settings_field():
    rows = table_rows(read("configuration.md"))
    missing = []
    for env, setting in settings_by_env().items():
        # Fields every service has are one generic row; a field only one service adds (e.g.
        # publication's rate limit) is documented under its own full name.
        generic = setting.service is not None and setting.field in ServiceSettings.model_fields
        documented = f"SIPAS_<SERVICE>_{setting.field.upper()}" if generic else env
        if documented not in rows:
            missing.append(documented)
    for env in NON_SETTINGS:
        if env not in rows:
            missing.append(env)
    assert not missing, f"docs/configuration.md has no table row for {sorted(set(missing))}"


def test_configuration_shows_the_current_platform_defaults():
    rows = table_rows(read("configuration.md"))
    wrong = {}
    for name, info in PlatformSettings.model_fields.items():
        if name not in flat_fields(PlatformSettings):
            continue
        if info.default_factory is not None:  # computed per process (a random token): no fixed value
            continue
        env = f"SIPAS_{name.upper()}"
        want = documented_default(info.get_default(call_default_factory=True))
        got = rows[env][0]
        if got != want:
            wrong[env] = (got, want)
    assert not wrong, f"defaults in docs/configuration.md differ from PlatformSettings (documented, actual): {wrong}"


def test_configuration_shows_the_service_defaults():
    rows = table_rows(read("configuration.md"))
    defaults = {f: info.default for f, info in ServiceSettings.model_fields.items()}
    assert rows["SIPAS_<SERVICE>_HOST"][0] == f"`{defaults['host']}`"
    port_cell = rows["SIPAS_<SERVICE>_PORT"][0]
    for name in SERVICES:
        assert f"{DEFAULT_PORTS[name]} {name}" in port_cell


@pytest.mark.parametrize("page", PAGES)
def test_every_variable_named_in_the_docs_exists(page):
    """A renamed setting must not live on in the docs."""
    known = set(settings_by_env()) | set(NON_SETTINGS)
    unknown = set()
    for token in DOC_VAR.findall(read(page)):
        if token.endswith("_") or token == "SIPAS":
            continue  # a prefix such as SIPAS_ or SIPAS_<SERVICE>_
        if "<" in token:
            expanded = {re.sub(r"<[A-Z]+>", name.upper(), token) for name in SERVICES}
            if not expanded <= known:
                unknown.add(token)
        elif token not in known:
            unknown.add(token)
    assert not unknown, f"docs/{page} names variables no settings class reads: {sorted(unknown)}"


def test_api_lists_every_problem_type():
    source = (ROOT / "shared" / "errors.py").read_text(encoding="utf-8")
    slugs = set(re.findall(r"_problem_class\(\s*\"([a-z0-9-]+)\"", source))
    assert {"not-found", "validation-error", "internal-error"} <= slugs  # the pattern still finds them
    rows = table_rows(read("api.md"))
    missing = sorted(s for s in slugs if s not in rows)
    assert not missing, f"docs/api.md does not list the problem types {missing}"
    assert problem_type("x") == "urn:sipas:problem:x"
    assert "urn:sipas:problem:<slug>" in read("api.md")


def test_api_lists_every_role_and_service_port():
    rows = table_rows(read("api.md"))
    for role in Role:
        assert role.value in rows, f"docs/api.md does not describe the {role.value} role"
    for name in SERVICES:
        assert f"`http://127.0.0.1:{DEFAULT_PORTS[name]}`" in rows[name]
    text = read("api.md")
    for header in ("X-API-Key", "X-Correlation-ID", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert header in text


def test_api_lists_every_metric():
    from prometheus_client import REGISTRY

    text = read("api.md")
    names = {m.name for m in REGISTRY.collect() if m.name.startswith("sipas_")}
    assert names, "no sipas_ metrics registered"
    for name in names:
        # Counters are collected without their _total suffix.
        assert name in text, f"docs/api.md does not list the metric {name}"


def test_events_example_is_a_valid_envelope_of_a_registered_contract():
    blocks = re.findall(r"```json\n(.*?)```", read("events.md"), flags=re.S)
    assert blocks, "docs/events.md has no JSON example"
    envelope = Envelope.model_validate(json.loads(blocks[0]))
    assert envelope.type == "sipas.sampling.wave.created.v1"
    assert envelope.type in CONTRACTS
    payload = envelope.payload()  # validates data against the contract (extra fields forbidden)
    assert envelope.subject == payload.subject()
    assert envelope.source == f"/sipas/{payload.producer}"
    assert set(json.loads(blocks[0])) == set(Envelope.model_fields), "the example should show every attribute"


def test_events_page_describes_every_envelope_attribute_and_points_at_asyncapi():
    rows = table_rows(read("events.md"))
    for attribute in Envelope.model_fields:
        assert attribute in rows, f"docs/events.md does not describe {attribute}"
    text = read("events.md")
    assert "python -m shared.contracts docs/events/asyncapi.json" in text
    assert (DOCS / "events" / "asyncapi.json").is_file()


def test_architecture_describes_each_service_and_the_service_anatomy():
    text = read("architecture.md")
    rows = table_rows(text)
    for name in SERVICES:
        assert name in rows, f"docs/architecture.md has no row for {name}"
        assert str(DEFAULT_PORTS[name]) == rows[name][0]
    for part in ("settings.py", "models.py", "schemas.py", "api.py", "service.py", "consumers.py", "app.py"):
        assert part in rows
    for name in SERVICES:
        assert (ROOT / "services" / name / "settings.py").is_file()
        assert (ROOT / "services" / name / "app.py").is_file()
        assert (ROOT / "services" / name / "migrations" / "versions").is_dir()


PATH = re.compile(r"`((?:shared|services|deploy|docs|tests)/[A-Za-z0-9_./-]*)`|\]\(([A-Za-z0-9_./-]+\.(?:md|json))(?:#[a-z0-9-]+)?\)")


@pytest.mark.parametrize("page", PAGES)
def test_paths_in_the_docs_exist(page):
    missing = []
    for code_path, link in PATH.findall(read(page)):
        if code_path:
            target = ROOT / code_path
        else:
            target = DOCS / link
        if not target.exists():
            missing.append(code_path or link)
    assert not missing, f"docs/{page} refers to files that do not exist: {missing}"


def test_links_to_architecture_anchors_resolve():
    """GitHub anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", read("architecture.md"), flags=re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for page in PAGES:
        for anchor in re.findall(r"\(architecture\.md#([a-z0-9-]+)\)", read(page)):
            assert anchor in anchors, f"docs/{page} links to a missing section #{anchor}"
