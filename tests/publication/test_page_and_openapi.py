"""The public page at / and the OpenAPI document a dashboard builder generates a client from.

The page is checked as served on every machine: the HTML, its Vietnamese text, the API calls
its script makes, and the data those calls return, which is what the chart and table draw.
Where Chromium is installed, ``test_page_in_browser.py`` also renders it in a headless browser.
The client is generated for real with openapi-python-client and used against the service.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import httpx

from tests.publication.helpers import Scenario


async def test_the_page_shows_the_latest_release_ranking_and_a_generated_client_reads_it(stack, clients, tmp_path):
    s = Scenario(stack, clients)
    page = await s.api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<html lang="vi">' in html and '<meta charset="utf-8">' in html
    for text in ("Chỉ số hài lòng về sự phục vụ hành chính", "Xếp hạng các tỉnh, thành phố", "KTC 95%", "Hạng"):
        assert text in html
    assert re.search(r"<script\s+src=|<link[^>]+stylesheet", html) is None  # no external assets, no build step
    assert (await s.api.get("/", headers={"If-None-Match": page.headers["ETag"]})).status_code == 304

    # The calls the script makes, in its order, return what it draws.
    calls = re.findall(r'getJSON\(([^)]*)\)', html)
    assert any("/v1/public/releases?limit=1" in c for c in calls)
    assert any("/rankings" in c for c in calls) and any("/provinces" in c for c in calls)
    _, release_id = await s.published_release()
    latest = (await s.api.get("/v1/public/releases?limit=1")).json()["items"][0]
    assert latest["release_id"] == release_id
    q = f"?version={latest['version']}"
    base = f"/v1/public/releases/{release_id}"
    ranking = (await s.api.get(base + "/rankings" + q + "&indicator=sipas&limit=500")).json()["items"]
    provinces = (await s.api.get(base + "/provinces" + q + "&indicator=sipas&weighting=none&limit=100")).json()
    figures = {p["province_code"]: f for p in provinces["items"] for f in p["figures"]}
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4, 5]
    for r in ranking:  # every bar has its value and CI whisker
        f = figures[r["province_code"]]
        assert f["value"] == r["value"] and f["ci_low"] < r["value"] < f["ci_high"]
    assert figures["92"]["flag"] == "unreliable"  # drawn in the lighter colour, noted in the table


    # A dashboard builder generates a typed client with openapi-python-client (no warnings)
    # and its generated functions read the same release.
    doc = s.app.openapi()
    spec = tmp_path / "publication.json"
    spec.write_text(json.dumps(doc))
    config = tmp_path / "config.yml"
    config.write_text("package_name_override: sipas_pub_client\npost_hooks: []\n")
    exe = str(__import__("pathlib").Path(sys.executable).with_name("openapi-python-client"))
    out = subprocess.run([exe, "generate", "--path", str(spec), "--config", str(config),
                          "--output-path", str(tmp_path / "client" / "sipas_pub_client"), "--meta", "none"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    sys.path.insert(0, str(tmp_path / "client"))
    try:
        models = importlib.import_module("sipas_pub_client.models")
        for model in ("ReleaseDocument", "RankingPage", "Figure", "Series", "ReleasePage", "WebhookCreated"):
            assert hasattr(models, model), model
        client_mod = importlib.import_module("sipas_pub_client")
        rankings = importlib.import_module("sipas_pub_client.api.public.list_rankings_v1_public_releases_release_id_rankings_get")
        get_release = importlib.import_module("sipas_pub_client.api.public.get_release_v1_public_releases_release_id_get")
        client = client_mod.Client(base_url="http://publication")
        client.set_async_httpx_client(httpx.AsyncClient(transport=httpx.ASGITransport(app=s.app), base_url="http://publication"))
        page = await rankings.asyncio(client=client, release_id=release_id)
        assert [r.province_code for r in page.items] == ["92", "79", "04", "02", "01"]
        assert page.items[0].rank == 1 and page.items[0].rank_change is None
        release = await get_release.asyncio(client=client, release_id=release_id)
        assert release.metadata.methodology_version == "sipas-2023"
        assert {f.code for f in release.national} == {"sipas", "service", "E1"}
    finally:
        sys.path.remove(str(tmp_path / "client"))
        for name in [m for m in sys.modules if m.startswith("sipas_pub_client")]:
            del sys.modules[name]
