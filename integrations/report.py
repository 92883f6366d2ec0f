"""Writes the lab's results: RESULTS.md (a table per situation) and results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from integrations.client import USER_BOUND, USER_COUNT, USER_IDLE, USER_INTERVAL
from integrations.runner import bound_with_kapatch, tolerance

TITLES = {
    "keepalive": "1. Keepalive: an idle connection waits on a response, then the host vanishes",
    "user-timeout": "2. User timeout: the host vanishes, then the client sends a request "
    "that is never acknowledged",
    "respect": "3. Respect: the application set its own keepalive "
    f"({USER_IDLE}/{USER_INTERVAL}/{USER_COUNT} -> {USER_BOUND} s) through the client's own API",
}
INTRO = {
    "keepalive": "Measured from the cut (and, in brackets, from the last packet the client "
    "received, read from `ss` right after the cut). Bound = idle + interval x count.",
    "user-timeout": "Measured from the moment the client sent its request into the cut. "
    "Bound = the policy's user timeout (`KAPATCH_USER_TIMEOUT`), +2 s allowed for the "
    "retransmission timer.",
    "respect": "Both columns must show the application's own bound, not the policy's: "
    "kapatch must leave explicit settings alone. Measured from the cut (from the last packet).",
}


def _cell(row: dict[str, Any]) -> str:
    st = row["status"]
    if st == "detected":
        txt = f"{row['detect_s']:.2f} s"
        if row.get("from_last_packet_s") is not None:
            txt += f" ({row['from_last_packet_s']:.2f} s)"
    elif st == "hanging":
        txt = f"still hanging at the cap ({row['cap_s']:g} s)"
    elif st == "returned":
        txt = f"returned (unexpected): {row.get('result', '')[:60]}"
    elif st == "setup-failed":
        txt = "setup failed"
    else:
        txt = "process exited without an event"
    mark = "" if row.get("verdict", {}).get("ok", True) else " ✗"
    if st != "setup-failed" and row.get("verdict", {}).get("ok"):
        mark = " ✓"
    return txt + mark


def _error(row: dict[str, Any]) -> str:
    err = row.get("error")
    if not err:
        return "-"
    msg = (err.get("message") or "").replace("|", "/").replace("\n", " ")
    if len(msg) > 90:
        msg = msg[:87] + "..."
    eno = f" [{err['errno']}]" if err.get("errno") else ""
    return f"`{err['type'].rsplit('.', 1)[-1]}`{eno}: {msg}"


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    env = " ".join(f"{k}={v}" for k, v in results["policy_env"].items())
    ut = " ".join(f"{k}={v}" for k, v in results["user_timeout_env"].items())
    vers = ", ".join(f"{k} {v or 'not installed'}" for k, v in results["versions"].items())
    ok = sum(1 for r in rows if r.get("verdict", {}).get("ok"))
    out = [
        "# Dead-peer lab results",
        "",
        f"Generated {results['generated_utc']} UTC by `python -m integrations` "
        f"(Linux {results['kernel']}, Python {results['python']}; {vers}).",
        "",
        f"- With kapatch: the client process gets only `{env}` in its environment "
        f"(plus `{ut}` in the user-timeout situation); its code never imports kapatch.",
        "- Without kapatch: no `KAPATCH_*` variable at all; each client is watched for "
        f"{results['cap_s']:g} s after the cut, then killed.",
        f"- The cut: every packet on the lab host's veth dropped inside its namespace "
        f"({results['firewall']}), both ways; link up, no ICMP. Check right after each cut: "
        + "; ".join(sorted({b["silence_probe"] for b in results["batches"]})),
        f"- Rows meeting the expectation: {ok}/{len(rows)}. Wall time of the whole lab: "
        f"{results['wall_s']:g} s.",
        "",
    ]
    for situation in ("keepalive", "user-timeout", "respect"):
        srows = [r for r in rows if r["situation"] == situation]
        if not srows:
            continue
        by_client: dict[str, dict[bool, dict[str, Any]]] = {}
        for r in srows:
            by_client.setdefault(r["client"], {})[r["kapatch"]] = r
        bound = bound_with_kapatch(situation)
        out += [
            f"## {TITLES[situation]}",
            "",
            INTRO[situation],
            "",
            "| client | bound | with kapatch | error the application saw (with kapatch) "
            "| options on the socket (with kapatch) | without kapatch "
            "| options without kapatch -> their bound |",
            "|---|---|---|---|---|---|---|",
        ]
        for client, pair in by_client.items():
            w, wo = pair.get(True), pair.get(False)
            out.append(
                "| "
                + " | ".join(
                    [
                        client,
                        f"{bound:g} s (+{tolerance(situation):g})",
                        _cell(w) if w else "-",
                        _error(w) if w else "-",
                        (w["opts_summary"] + ("" if w["kapatch_loaded"] else "; kapatch not loaded"))
                        if w
                        else "-",
                        _cell(wo) + (f"; {_error(wo)}" if wo and wo.get("error") else "") if wo else "-",
                        f"{wo['opts_summary']} -> {wo['kernel_bound']}" if wo else "-",
                    ]
                )
                + " |"
            )
        out.append("")
    out += [
        "✓ = meets the expectation (with kapatch: detected within bound + tolerance; "
        "without kapatch: still hanging at the cap; respect: the application's bound), "
        "✗ = does not. 'kapatch not loaded' = the client process had not imported kapatch "
        "at start-up, i.e. environment activation was not in effect.",
        "",
    ]
    return "\n".join(out)


def write(results: dict[str, Any], outdir: Path) -> tuple[Path, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    md, js = outdir / "RESULTS.md", outdir / "results.json"
    md.write_text(markdown(results))
    js.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return md, js
