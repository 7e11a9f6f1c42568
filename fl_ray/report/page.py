"""The report page: one self-contained HTML file (inline CSS, PNGs embedded as base64 data URIs),
so it opens offline, can be mailed to an auditor, and references nothing outside itself."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape
from typing import Any

from fl_ray.report.plots import PLOTS, human_bytes
from fl_ray.report.series import RunSeries
from fl_ray.report.verification import FAILED, VERIFIED, Verification


@dataclass(frozen=True)
class RosterEntry:
    silo: str
    address: str | None  # None: the silo appears in the metrics but not in the roster


@dataclass(frozen=True)
class PageInputs:
    """Everything the page shows; built by :func:`fl_ray.report.write_report`."""

    run_name: str
    run_info: dict[str, Any]
    recipe: dict[str, Any]
    recipe_yaml: str
    metrics: list[dict[str, Any]]
    series: RunSeries
    verification: Verification
    pngs: dict[str, bytes]  # file stem -> PNG bytes, in PLOTS order
    roster: dict[str, Any] | None
    roster_source: str | None
    baseline: dict[str, Any] | None


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;
background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px} h2{margin:32px 0 10px;font-size:19px;border-bottom:1px solid #ddd;
padding-bottom:4px} .sub{color:#555;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px} .card span{color:#555;font-size:12px}
.banner{border-radius:8px;padding:12px 16px;margin-top:16px;font-weight:600}
.banner.verified{background:#e3f5e6;border:1px solid #2ca02c}
.banner.failed,.banner.unavailable{background:#fdeaea;border:1px solid #d62728}
.banner.unsigned{background:#fff6e0;border:1px solid #e0a000}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
th,td{border:1px solid #e2e4e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1b7a2b;font-weight:600} .bad{color:#b3171d;font-weight:600} .muted{color:#888}
code{font-size:12px;word-break:break-all}
figure{background:#fff;border:1px solid #e2e4e8;border-radius:8px;margin:0 0 16px;padding:8px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#555;font-size:12px;text-align:center}
pre{background:#fff;border:1px solid #e2e4e8;padding:10px;overflow:auto;font-size:12px}
"""


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return '<span class="muted">–</span>'
    return f"{value:.{digits}f}"


def roster_entries(roster: dict[str, Any] | None, silos: tuple[str, ...]) -> list[RosterEntry]:
    """Silo → address from a roster.json (``silos`` as a mapping or a list), plus any silo seen
    in the metrics that the roster does not name."""
    addresses: dict[str, str | None] = {}
    raw = (roster or {}).get("silos", {})
    if isinstance(raw, dict):
        for name, value in raw.items():
            addresses[name] = value.get("address") if isinstance(value, dict) else str(value)
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and "name" in item:
                addresses[item["name"]] = item.get("address")
    for name in silos:
        addresses.setdefault(name, None)
    return [RosterEntry(name, addresses[name]) for name in sorted(addresses)]


def _coordinator_address(roster: dict[str, Any]) -> str | None:
    coord = roster.get("coordinator")
    if isinstance(coord, dict):
        return coord.get("address")
    return str(coord) if coord else None


def _header(p: PageInputs) -> str:
    s = p.series
    info = p.run_info
    first, last = s.eval_loss[0], s.eval_loss[-1]
    drop = (
        f"{1 - last / first:.1%}"
        if isinstance(first, float) and isinstance(last, float) and first
        else "–"
    )
    training = [i for i, st in enumerate(s.status) if st != "initial"]
    aborted = sum(1 for st in s.status if st == "aborted")
    total_bytes = sum(s.bytes_down) + sum(s.bytes_up)
    strategy = (p.recipe.get("strategy") or {}).get("name", "?")
    cards = [
        (
            f"{_num(first)} → {_num(last)}",
            f"held-out loss, round 0 → {s.rounds[-1]} ({drop} lower)",
        ),
        (f"{len(training) - aborted} / {len(training)}", "rounds merged / run"),
        (str(len(s.silos)), "silos"),
        (escape(str(strategy)), "strategy"),
        (human_bytes(total_bytes), "adapter bytes moved"),
    ]
    if s.has_epsilon:
        eps = [e for e in s.epsilon if e is not None][-1]
        cards.append((_num(eps, 3), "privacy ε spent"))
    card_html = "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for v, k in cards)
    meta = " · ".join(
        escape(f"{k}: {info[k]}")
        for k in ("created", "fl_ray_version", "recipe_sha256")
        if k in info
    )
    v = p.verification
    return (
        f"<h1>fl_ray run report: {escape(p.run_name)}</h1>"
        f'<div class="sub">{meta}</div>'
        f'<div class="banner {escape(v.state)}">Receipts: {escape(v.headline)}</div>'
        + "".join(f'<div class="sub">verifier: {escape(note)}</div>' for note in v.notes)
        + f'<div class="cards">{card_html}</div>'
    )


def _roster_section(p: PageInputs) -> str:
    s = p.series
    rows = []
    for entry in roster_entries(p.roster, s.silos):
        merged = [m["round"] for m in p.metrics if entry.silo in m.get("contributed", [])]
        dropped = [m["round"] for m in p.metrics if entry.silo in m.get("dropped", {})]
        examples = sum(
            int(m.get("silos", {}).get(entry.silo, {}).get("num_examples", 0))
            for m in p.metrics
            if entry.silo in m.get("contributed", [])
        )
        if p.roster is None:
            addr = '<span class="muted">no roster</span>'
        elif entry.address is None:
            addr = '<span class="bad">not in roster</span>'
        else:
            addr = f"<code>{escape(entry.address)}</code>"
        rows.append(
            f"<tr><td>{escape(entry.silo)}</td><td>{addr}</td>"
            f'<td class="num">{len(merged)}</td><td>{escape(_ranges(merged))}</td>'
            f'<td class="num">{examples}</td>'
            f'<td class="num">{len(dropped)}</td><td>{escape(_ranges(dropped))}</td></tr>'
        )
    if p.roster is None:
        source = "No roster.json found in the run directory and none given (--roster)."
    else:
        coord = _coordinator_address(p.roster)
        fed = p.roster.get("federation_id", p.roster.get("federation"))
        source = f"Roster: <code>{escape(str(p.roster_source))}</code>"
        if fed:
            source += f" · federation <b>{escape(str(fed))}</b>"
        if coord:
            source += f" · coordinator <code>{escape(coord)}</code>"
    raw = (
        f"<details><summary>roster.json</summary><pre>"
        f"{escape(json.dumps(p.roster, indent=2, sort_keys=True))}</pre></details>"
        if p.roster is not None
        else ""
    )
    return (
        "<h2>Who shaped the model</h2>"
        f'<p class="sub">{source}</p>'
        "<table><tr><th>silo</th><th>address</th><th>rounds merged</th><th>which</th>"
        "<th>examples merged</th><th>rounds dropped</th><th>which</th></tr>"
        + "".join(rows)
        + "</table>"
        + raw
    )


def _ranges(rounds: list[int]) -> str:
    """[1,2,3,5] -> '1–3, 5'."""
    out: list[str] = []
    for r in sorted(rounds):
        if out and out[-1][1] == r - 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in out)


def _baseline_section(baseline: dict[str, Any] | None) -> str:
    if not baseline:
        return ""
    fed = baseline.get("federated_mean_eval_loss")
    rows = [f"<tr><td><b>federation</b></td><td class='num'><b>{_num(fed)}</b></td><td></td></tr>"]
    for owner, row in sorted((baseline.get("local_only") or {}).items()):
        mine = row.get("mean_eval_loss")
        verdict = (
            '<span class="ok">federation better</span>'
            if isinstance(mine, (int, float)) and isinstance(fed, (int, float)) and fed < mine
            else '<span class="bad">alone was as good or better</span>'
        )
        rows.append(
            f"<tr><td>{escape(owner)} alone</td><td class='num'>{_num(mine)}</td>"
            f"<td>{verdict}</td></tr>"
        )
    return (
        "<h2>Federation vs each department alone</h2>"
        f'<p class="sub">Mean held-out loss over all departments; each silo alone trained '
        f"{escape(str(baseline.get('steps', '?')))} local steps.</p>"
        "<table><tr><th>model</th><th>mean held-out loss</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _plots_section(pngs: dict[str, bytes]) -> str:
    figures = []
    for stem, blob in pngs.items():
        caption = PLOTS[stem][0]
        data = base64.b64encode(blob).decode("ascii")
        figures.append(
            f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)} ({escape(stem)}.png)</figcaption></figure>"
        )
    return "<h2>Plots</h2>" + "".join(figures)


def _rounds_section(p: PageInputs) -> str:
    v = p.verification
    rows = []
    for m in p.metrics:
        r = int(m["round"])
        state = v.round_state.get(r, "")
        css = "ok" if state == VERIFIED else "bad" if state == FAILED else "muted"
        receipt = f'<span class="{css}">{escape(state)}</span>'
        if r in v.receipt_hashes:
            receipt += f"<br><code>{escape(v.receipt_hashes[r][:18])}…</code>"
        if r == v.failure_round and v.failure:
            receipt += f"<br><span class='bad'>{escape(v.failure)}</span>"
        status = str(m.get("status", ""))
        dropped = "<br>".join(
            f"{escape(n)}: {escape(str(why))}" for n, why in (m.get("dropped") or {}).items()
        )
        rows.append(
            f"<tr><td class='num'>{r}</td>"
            f"<td class='{'bad' if status == 'aborted' else ''}'>{escape(status)}</td>"
            f"<td>{receipt}</td><td class='num'>{_num(m.get('eval_loss'))}</td>"
            f"<td class='num'>{_num(m.get('train_loss'))}</td>"
            f"<td>{escape(', '.join(m.get('contributed', [])))}</td><td>{dropped}</td>"
            f"<td class='num'>{human_bytes(m.get('bytes_down', 0))}</td>"
            f"<td class='num'>{human_bytes(m.get('bytes_up', 0))}</td>"
            f"<td class='num'>{_num(m.get('seconds'), 2)}</td></tr>"
        )
    return (
        "<h2>Rounds</h2><table><tr><th>round</th><th>status</th><th>receipt</th>"
        "<th>held-out loss</th><th>train loss</th><th>contributed</th><th>dropped (why)</th>"
        "<th>down</th><th>up</th><th>seconds</th></tr>" + "".join(rows) + "</table>"
    )


def render_page(p: PageInputs) -> str:
    """The whole report as one HTML string."""
    body = (
        _header(p)
        + _roster_section(p)
        + _baseline_section(p.baseline)
        + _plots_section(p.pngs)
        + _rounds_section(p)
        + "<h2>Recipe</h2><details><summary>recipe.yaml (resolved)</summary>"
        + f"<pre>{escape(p.recipe_yaml)}</pre></details>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>fl_ray report: {escape(p.run_name)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
