"""The public page at ``/``: the latest release as a ranking chart and a table with 95% CIs.

One static HTML document with inline CSS and JavaScript (no build step, no external assets): it
reads the same public API as any dashboard (``/v1/public/releases``, ``.../rankings``,
``.../provinces``) and draws an SVG bar chart. Vietnamese by default, English on a toggle.
Province names are not data this service holds (it publishes codes); the page shows the GSO code.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

PAGE = """<!doctype html>
<html lang="vi">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SIPAS — Chỉ số hài lòng về sự phục vụ hành chính</title>
<style>
 body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:980px;padding:1rem;color:#1b1b1b}
 header{display:flex;justify-content:space-between;align-items:baseline;gap:1rem;flex-wrap:wrap}
 h1{font-size:1.4rem;margin:.2rem 0} .meta{color:#555;font-size:.9rem}
 button{font:inherit;padding:.2rem .6rem;cursor:pointer}
 svg text{font-size:11px} .bar{fill:#c62828} .bar.unreliable{fill:#ef9a9a} .ci{stroke:#333;stroke-width:1}
 table{border-collapse:collapse;width:100%;margin-top:1rem;font-size:.9rem}
 th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:right} th:nth-child(2),td:nth-child(2){text-align:left}
 .up{color:#2e7d32} .down{color:#c62828} .flag{color:#8d6e63;font-size:.8rem} #error{color:#b00020}
</style>
</head>
<body>
<header>
 <div>
  <h1 data-i18n="title">Chỉ số hài lòng về sự phục vụ hành chính (SIPAS)</h1>
  <div class="meta" id="meta"></div>
 </div>
 <button id="lang" type="button" aria-label="Language">English</button>
</header>
<p id="error" role="alert"></p>
<section>
 <h2 data-i18n="chart">Xếp hạng các tỉnh, thành phố</h2>
 <svg id="chart" role="img" aria-labelledby="chart-title" width="100%" height="40"><title id="chart-title">SIPAS</title></svg>
</section>
<section>
 <h2 data-i18n="table">Chỉ số SIPAS và khoảng tin cậy 95%</h2>
 <table id="ranking">
  <thead><tr>
   <th data-i18n="rank">Hạng</th><th data-i18n="province">Tỉnh (mã)</th><th>SIPAS (%)</th>
   <th data-i18n="ci">KTC 95%</th><th>n</th><th data-i18n="change">Thay đổi hạng</th><th data-i18n="flag">Ghi chú</th>
  </tr></thead>
  <tbody></tbody>
 </table>
 <p class="meta" id="footnotes"></p>
</section>
<script>
"use strict";
const TEXT = {
 vi: {title: "Chỉ số hài lòng về sự phục vụ hành chính (SIPAS)", chart: "Xếp hạng các tỉnh, thành phố",
      table: "Chỉ số SIPAS và khoảng tin cậy 95%", rank: "Hạng", province: "Tỉnh (mã)", ci: "KTC 95%",
      change: "Thay đổi hạng", flag: "Ghi chú", other: "English", none: "Chưa có kết quả nào được công bố.",
      published: "Công bố", version: "phiên bản", methodology: "Phương pháp", forms: "phiếu hợp lệ",
      unreliable: "độ tin cậy thấp", suppressed: "không công bố (quá ít phiếu)", notcomparable: "không so sánh được",
      correction: "Đính chính"},
 en: {title: "Satisfaction Index of Public Administrative Services (SIPAS)", chart: "Provinces ranked",
      table: "SIPAS with 95% confidence intervals", rank: "Rank", province: "Province (code)", ci: "95% CI",
      change: "Rank change", flag: "Notes", other: "Tiếng Việt", none: "Nothing has been published yet.",
      published: "Published", version: "version", methodology: "Methodology", forms: "valid forms",
      unreliable: "low reliability", suppressed: "suppressed (too few forms)", notcomparable: "not comparable",
      correction: "Correction"}
};
let lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "vi";
let state = null;
const $ = (id) => document.getElementById(id);
const fmt = (x) => x === null || x === undefined ? "—" : (Math.round(x * 100) / 100).toFixed(2);

async function getJSON(path) {
 const r = await fetch(path, {headers: {Accept: "application/json"}});
 if (!r.ok) throw new Error(path + ": HTTP " + r.status);
 return r.json();
}

async function load() {
 const releases = await getJSON("/v1/public/releases?limit=1");
 if (!releases.items.length) { $("error").textContent = TEXT[lang].none; return; }
 const latest = releases.items[0];
 const base = "/v1/public/releases/" + latest.release_id;
 const q = "?version=" + latest.version;
 const [doc, ranking, provinces] = await Promise.all([
  getJSON(base + q), getJSON(base + "/rankings" + q + "&indicator=sipas&limit=500"),
  getJSON(base + "/provinces" + q + "&indicator=sipas&weighting=none&limit=100")]);
 let more = provinces;
 const figures = {};
 for (;;) {
  for (const p of more.items) for (const f of p.figures) if (f.indicator === "sipas" && f.weighting === "none") figures[p.province_code] = f;
  if (!more.next_cursor) break;
  more = await getJSON(base + "/provinces" + q + "&indicator=sipas&weighting=none&limit=100&cursor=" + encodeURIComponent(more.next_cursor));
 }
 state = {latest, doc, ranking: ranking.items, figures};
 render();
}

function render() {
 const t = TEXT[lang];
 document.documentElement.lang = lang;
 document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t[el.dataset.i18n]; });
 $("lang").textContent = t.other;
 if (!state) return;
 const m = state.doc.metadata;
 $("meta").textContent = m.wave.name + " · " + t.published + " " + new Date(m.published_at).toLocaleString(lang === "vi" ? "vi-VN" : "en-GB")
  + " · " + t.version + " " + m.version + " · " + t.methodology + " " + m.methodology_version + " · " + m.accepted_forms + " " + t.forms
  + (m.correction_reason ? " · " + t.correction + ": " + m.correction_reason : "");
 $("footnotes").textContent = m.footnotes.join(" · ");
 const rows = state.ranking.filter((r) => r.value !== null);
 const svg = $("chart");
 const barH = 16, gap = 4, left = 48, width = 900, scale = (width - left - 60) / 100;
 svg.setAttribute("viewBox", "0 0 " + width + " " + (rows.length * (barH + gap) + 10));
 svg.setAttribute("height", String(rows.length * (barH + gap) + 10));
 const ns = "http://www.w3.org/2000/svg";
 while (svg.lastChild && svg.lastChild.nodeName !== "title") svg.removeChild(svg.lastChild);
 rows.forEach((r, i) => {
  const f = state.figures[r.province_code] || {};
  const y = i * (barH + gap) + 4;
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "0"); label.setAttribute("y", String(y + 12)); label.textContent = r.rank + ". " + r.province_code;
  const bar = document.createElementNS(ns, "rect");
  bar.setAttribute("class", "bar" + (f.flag === "unreliable" ? " unreliable" : ""));
  bar.setAttribute("x", String(left)); bar.setAttribute("y", String(y));
  bar.setAttribute("width", String(Math.max(0, r.value * scale))); bar.setAttribute("height", String(barH));
  bar.setAttribute("data-province", r.province_code);
  svg.appendChild(label); svg.appendChild(bar);
  if (f.ci_low !== null && f.ci_low !== undefined) {
   const ci = document.createElementNS(ns, "line");
   ci.setAttribute("class", "ci"); ci.setAttribute("y1", String(y + barH / 2)); ci.setAttribute("y2", String(y + barH / 2));
   ci.setAttribute("x1", String(left + f.ci_low * scale)); ci.setAttribute("x2", String(left + f.ci_high * scale));
   svg.appendChild(ci);
  }
  const value = document.createElementNS(ns, "text");
  value.setAttribute("x", String(left + r.value * scale + 6)); value.setAttribute("y", String(y + 12)); value.textContent = fmt(r.value);
  svg.appendChild(value);
 });
 const body = $("ranking").tBodies[0];
 body.replaceChildren();
 for (const r of state.ranking) {
  const f = state.figures[r.province_code] || {};
  const tr = document.createElement("tr");
  const change = r.rank_change === null ? "—" : (r.rank_change > 0 ? "▲" + r.rank_change : r.rank_change < 0 ? "▼" + (-r.rank_change) : "=");
  const notes = [f.flag === "unreliable" ? t.unreliable : "", f.flag === "suppressed" ? t.suppressed : "", r.comparable ? "" : t.notcomparable].filter(Boolean).join("; ");
  for (const [text, cls] of [[r.rank ?? "—", ""], [r.province_code, ""], [fmt(r.value), ""],
       [f.ci_low === null || f.ci_low === undefined ? "—" : fmt(f.ci_low) + " – " + fmt(f.ci_high), ""], [f.n ?? "—", ""],
       [change, r.rank_change > 0 ? "up" : r.rank_change < 0 ? "down" : ""], [notes, "flag"]]) {
   const td = document.createElement("td"); td.textContent = String(text); if (cls) td.className = cls; tr.appendChild(td);
  }
  body.appendChild(tr);
 }
}

$("lang").addEventListener("click", () => { lang = lang === "vi" ? "en" : "vi"; render(); });
render();
load().catch((e) => { $("error").textContent = String(e); });
</script>
</body>
</html>
"""

BODY = PAGE.encode()
ETAG = '"' + hashlib.sha256(BODY).hexdigest()[:40] + '"'

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> Response:
    headers = {"ETag": ETAG, "Cache-Control": "public, max-age=300"}
    if request.headers.get("if-none-match") == ETAG:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(BODY, headers=headers)
