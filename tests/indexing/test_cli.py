"""``python -m services.indexing estimate``, run as users run it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "estimation-check"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.indexing", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def numbers(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from numbers(value, f"{path}/{key}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def lookup(tree, path):
    for part in path.strip("/").split("/"):
        tree = tree[part]
    return tree


def test_estimate_prints_the_expected_table():
    proc = run("estimate", str(FIXTURE / "responses.csv"), "--design", str(FIXTURE / "design.json"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('{\n  "national": {')  # indent 2
    got = json.loads(proc.stdout)
    expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
    assert set(got) == {"national", "provinces", "unweighted"}
    assert set(got["provinces"]) == set(expected["provinces"])
    checked = 0
    for path, want in numbers(expected):
        tol = 1e-6 if path.endswith("/se") else 1e-9
        assert lookup(got, path) == pytest.approx(want, abs=tol), path
        checked += 1
    assert checked == 157


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("province,stratum,weight,a1\n01,A,1,4\n", "missing column(s): a2"),
        ("province,stratum,weight,a1,a2,a3,p1,p2,p3,p4,s1,s2\n01,A,1,4,4,4,4,9,4,4,4,4\n",
         "line 2, column 'p2': answer '9'"),
        ("province,stratum,weight,a1,a2,a3,p1,p2,p3,p4,s1,s2\n01,A,one,4,4,4,4,4,4,4,4,4\n",
         "line 2, column 'weight': 'one' is not a number"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, csv_text, message):
    path = tmp_path / "responses.csv"
    path.write_text(csv_text, encoding="utf-8")
    proc = run("estimate", str(path), "--design", str(FIXTURE / "design.json"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_design_file_exits_2(tmp_path):
    proc = run("estimate", str(FIXTURE / "responses.csv"), "--design", str(tmp_path / "nope.json"))
    assert proc.returncode == 2
    assert "cannot read design" in proc.stderr


def test_usage_errors_exit_2():
    proc = run("estimate", str(FIXTURE / "responses.csv"))  # --design is required
    assert proc.returncode == 2
    assert "--design" in proc.stderr
