"""The production deployment files, checked by parsing (no Docker engine needed).

docker-compose.yml, deploy/Dockerfile, deploy/prometheus.yml and deploy/env.example must agree
with the code: the five services and their ports, the one image, the order migrate → services,
and every SIPAS_* variable being a real settings field, so a renamed setting breaks this test
instead of a deployment.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from shared.settings import DEFAULT_PORTS, SERVICES, PlatformSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"

# SIPAS_* names that are not settings fields, and the file that reads each. The tests check that
# the file still mentions the name, so this list cannot quietly outlive the code.
NON_SETTINGS = {
    "SIPAS_SERVICE": "deploy/Dockerfile",
    "SIPAS_TEST_BACKEND": "tests/conftest.py",
    "SIPAS_TEST_DATABASE_URL": "tests/conftest.py",
    "SIPAS_TEST_BUS_URL": "tests/conftest.py",
    "SIPAS_REQUIRE_SERVICES": "tests/tiers.py",
}
ENV_NAME = re.compile(r"\bSIPAS_[A-Z0-9_]*[A-Z0-9]\b")


# --- the settings classes, as environment variable names (also used by test_docs.py) ---


@dataclass(frozen=True)
class Setting:
    env: str  # e.g. SIPAS_BUS_URL or SIPAS_SAMPLING_PORT
    cls: type
    field: str
    service: str | None  # None for platform settings


def service_settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{name}.settings")
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and getattr(obj, "service", None) == name
    ]
    assert len(found) == 1, f"services/{name}/settings.py should define one ServiceSettings subclass for {name}"
    return found[0]


def flat_fields(cls: type) -> list[str]:
    """Fields read from one environment variable each (a nested settings model is not one)."""
    return [
        name
        for name, info in cls.model_fields.items()
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
    ]


def env_prefix(cls: type) -> str:
    return cls.model_config.get("env_prefix", "")


def settings_by_env() -> dict[str, Setting]:
    """Every environment variable the settings classes read."""
    found = [Setting((env_prefix(PlatformSettings) + f).upper(), PlatformSettings, f, None) for f in flat_fields(PlatformSettings)]
    for name in SERVICES:
        cls = service_settings_class(name)
        found += [Setting((env_prefix(cls) + f).upper(), cls, f, name) for f in flat_fields(cls)]
    by_env: dict[str, Setting] = {}
    for s in found:
        assert s.env not in by_env, f"{s.env} would be read by two settings fields: {by_env[s.env]} and {s}"
        by_env[s.env] = s
    return by_env


def env_example_names() -> list[str]:
    """Names set or shown (commented out) in deploy/env.example."""
    return re.findall(r"^#?\s*(SIPAS_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), flags=re.M)


# --- parsed files ---


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except ValueError:
        return shlex.split(args)
    assert isinstance(value, list)
    return value


# --- compose ---


def test_compose_has_the_five_services_and_their_infrastructure(services):
    for name in (*SERVICES, "postgres", "rabbitmq", "prometheus", "migrate"):
        assert name in services, f"docker-compose.yml has no {name} service"


def test_every_service_runs_the_one_image_and_selects_itself(services):
    images = {services["migrate"]["image"]}
    for name in SERVICES:
        svc = services[name]
        build = svc["build"]
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / build.get("context", ".")).resolve() == ROOT
        images.add(svc["image"])
        assert environment(svc)["SIPAS_SERVICE"] == name
        assert "command" not in svc and "entrypoint" not in svc, f"{name} must run the image's CMD (serve $SIPAS_SERVICE)"
    assert services["migrate"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert len(images) == 1, f"one image for all services, got {images}"


@pytest.mark.parametrize("name", SERVICES)
def test_ports_are_the_documented_ones(services, name):
    svc = services[name]
    port = DEFAULT_PORTS[name]
    assert f"{port}:{port}" in [str(p) for p in svc["ports"]]
    env = environment(svc)
    assert env[f"SIPAS_{name.upper()}_HOST"] == "0.0.0.0"
    assert env.get(f"SIPAS_{name.upper()}_PORT", str(port)) == str(port)


def test_services_start_after_migrate_which_waits_for_postgres_and_rabbitmq(services):
    for name in SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    migrate = services["migrate"]
    command = migrate["command"]
    assert (shlex.split(command) if isinstance(command, str) else command) == ["python", "-m", "services", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"


def test_infrastructure_images_and_healthchecks(services):
    postgres, rabbitmq, prometheus = services["postgres"], services["rabbitmq"], services["prometheus"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert rabbitmq["image"].startswith("rabbitmq:3") and "management" in rabbitmq["image"]
    assert "rabbitmq-diagnostics" in " ".join(rabbitmq["healthcheck"]["test"])
    assert "9090:9090" in [str(p) for p in prometheus["ports"]]
    assert any(str(v).startswith("./deploy/prometheus.yml:") for v in prometheus["volumes"])


@pytest.mark.parametrize("name", (*SERVICES, "migrate"))
def test_env_points_at_the_postgres_and_rabbitmq_services(services, name):
    env = environment(services[name])
    pg = environment(services["postgres"])
    db = make_url(env["SIPAS_DATABASE_URL"])
    assert db.drivername == "postgresql+asyncpg"
    assert (db.host, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.database) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    bus = urlparse(env["SIPAS_BUS_URL"])
    assert bus.scheme == "amqp" and bus.hostname == "rabbitmq" and (bus.port or 5672) == 5672
    assert env["SIPAS_ENVIRONMENT"] == "production"
    for other in SERVICES:
        url = urlparse(env[f"SIPAS_{other.upper()}_URL"])
        assert (url.hostname, url.port) == (other, DEFAULT_PORTS[other]), f"SIPAS_{other.upper()}_URL in {name}"


def test_services_share_one_internal_token(services):
    """Left unset, each process draws its own random token and refuses the others' calls."""
    tokens = {environment(services[name]).get("SIPAS_INTERNAL_TOKEN") for name in SERVICES}
    assert len(tokens) == 1 and None not in tokens and "" not in tokens, tokens


@pytest.mark.parametrize("name", SERVICES)
def test_compose_environment_gives_the_settings_production_needs(services, name, monkeypatch):
    """Load the service's settings from exactly the compose environment, as the container would."""
    for var in list(os.environ):
        if var.startswith("SIPAS_"):
            monkeypatch.delenv(var)
    for key, value in environment(services[name]).items():
        monkeypatch.setenv(key, value)
    settings = service_settings_class(name)()
    assert settings.host == "0.0.0.0"
    assert settings.port == DEFAULT_PORTS[name]
    assert settings.effective_database_url.startswith("postgresql+asyncpg://")
    assert settings.db_schema == name
    assert settings.migrate_on_start is False  # the migrate job did it
    assert settings.platform.environment == "production"
    assert settings.platform.bus_url.startswith("amqp://")
    assert not settings.platform.embedded


def test_prometheus_scrapes_all_five_services():
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    scraped: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                scraped[target] = job.get("metrics_path", "/metrics")
    for name in SERVICES:
        target = f"{name}:{DEFAULT_PORTS[name]}"
        assert target in scraped, f"prometheus.yml does not scrape {target}"
        assert scraped[target] == "/metrics"


# --- Dockerfile ---


def test_dockerfile_builds_one_slim_non_root_image_serving_sipas_service():
    assert DOCKERFILE.is_file()
    instructions = dockerfile_instructions()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "python:3.11-slim" in text
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the service must not run as root"
    assert any(kw == "RUN" and "pip install" in args for kw, args in instructions)
    cmds = [args for kw, args in instructions if kw == "CMD"]
    assert len(cmds) == 1
    cmd = " ".join(exec_form(cmds[0]))
    assert "python -m services serve" in cmd
    assert "SIPAS_SERVICE" in cmd
    healthchecks = [args for kw, args in instructions if kw == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0] and "python" in healthchecks[0]
    assert "curl" not in healthchecks[0] and "wget" not in healthchecks[0]


def test_the_cli_has_the_commands_the_image_runs():
    for command, expect in (("serve", "sampling"), ("migrate", "services")):
        out = subprocess.run(
            [sys.executable, "-m", "services", command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert expect in out.stdout


def test_healthcheck_finds_the_port_the_service_listens_on(monkeypatch):
    """The image's healthcheck takes the port from the service's settings; check that works."""
    from services import settings_for

    monkeypatch.setenv("SIPAS_INDEXING_PORT", "9104")
    assert settings_for("indexing").port == 9104
    monkeypatch.delenv("SIPAS_INDEXING_PORT")
    assert settings_for("indexing").port == DEFAULT_PORTS["indexing"]


# --- every variable is a real setting ---


def test_every_sipas_variable_in_compose_and_env_example_is_a_real_setting(compose):
    known = settings_by_env()
    used: dict[str, str] = {}
    for name, svc in compose["services"].items():
        for var in environment(svc):
            if var.startswith("SIPAS_"):
                used[var] = f"docker-compose.yml ({name})"
    for var in env_example_names():
        used.setdefault(var, "deploy/env.example")
    for kw, args in dockerfile_instructions():
        if kw == "ENV":
            for var in ENV_NAME.findall(args):
                used.setdefault(var, "deploy/Dockerfile")
    unknown = {var: where for var, where in used.items() if var not in known and var not in NON_SETTINGS}
    assert not unknown, f"not settings fields (renamed or misspelt?): {unknown}"


def test_env_example_lists_every_variable_once():
    names = env_example_names()
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"listed twice in deploy/env.example: {duplicates}"
    missing = (set(settings_by_env()) | set(NON_SETTINGS)) - set(names)
    assert not missing, f"deploy/env.example does not mention {sorted(missing)}"


def test_every_variable_in_the_example_has_a_comment():
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^#?\s*SIPAS_[A-Z0-9_]+=", line):
            # The nearest line above that is not another variable must be a comment.
            j = i - 1
            while j >= 0 and re.match(r"^#?\s*SIPAS_[A-Z0-9_]+=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#") and lines[j].strip() != "#", f"no comment above {line!r}"


def test_non_settings_variables_are_still_read_where_we_say():
    for var, path in NON_SETTINGS.items():
        assert var in (ROOT / path).read_text(encoding="utf-8"), f"{var} is no longer read by {path}"


def test_each_service_reads_its_own_prefix():
    """Compose and the docs write SIPAS_<SERVICE>_<FIELD>; the classes must agree."""
    for name in SERVICES:
        assert env_prefix(service_settings_class(name)).upper() == f"SIPAS_{name.upper()}_"
    assert env_prefix(PlatformSettings).upper() == "SIPAS_"
