"""Writes the lab's results: RESULTS.md (a table per situation) and results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from integrations.client import LAYERS, USER_BOUND, USER_COUNT, USER_IDLE, USER_INTERVAL
from integrations.runner import bound_with_kapatch, tolerance

TITLES = {
    "keepalive": "1. Keepalive: an idle connection waits on a response, then the host vanishes",
    "user-timeout": "2. User timeout: the host vanishes, then the client sends a request "
    "that is never acknowledged",
    "respect": "3. Respect: the application set its own keepalive "
    f"({USER_IDLE}/{USER_INTERVAL}/{USER_COUNT} -> {USER_BOUND} s) through the client's own API",
    "hung-peer": "4. Hung peer: the network is fine, the server process is frozen (SIGSTOP)",
}
LAYER_TITLES = {
    "keepalive": "keepalive (the policy alone)",
    "heartbeat": "heartbeat",
    "app-timeout": "the application's read timeout",
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


def _short_error(row: dict[str, Any]) -> str:
    err = row.get("error") or {}
    if not err:
        return ""
    name = err["type"].rsplit(".", 1)[-1]
    code = re.search(r"StatusCode\.(\w+)", err.get("message") or "")
    return f"`{name}` {code.group(1)}" if code else f"`{name}`"


def hung_cell(row: dict[str, Any] | None, marks: bool = True) -> str:
    """One hung-peer row as a table cell: the time from the call, or how long it blocked."""
    if row is None:
        return "-"
    st, v = row["status"], row.get("verdict", {})
    if st == "detected":
        txt = f"{row['detect_s']:.2f} s {_short_error(row)}"
    elif st == "returned":
        txt = f"{row['detect_s']:.2f} s, a fresh connection answered"
    elif st == "hanging":
        txt = f"blocks (still at the {row['cap_s']:g} s cap)"
    elif st == "setup-failed":
        txt = "setup failed"
    else:
        txt = "process exited without an event"
    if marks:
        txt += " ✓" if v.get("ok") else " ✗"
    return txt


def hung_peer_table(results: dict[str, Any], marks: bool = True) -> list[str]:
    """client x layer: the hung-peer summary (RESULTS.md, and the README's copy of it)."""
    by_client: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results["rows"]:
        if r["situation"] == "hung-peer":
            by_client.setdefault(r["client"], {})[r["layer"]] = r
    out = [
        "| client | " + " | ".join(LAYER_TITLES[layer] for layer in LAYERS) + " |",
        "|---|" + "---|" * len(LAYERS),
    ]
    for client, layers in by_client.items():
        cells = []
        for layer in LAYERS:
            row = layers.get(layer)
            cell = hung_cell(row, marks)
            if row is not None and layer != "keepalive":
                mech = row["mechanism"]
                if layer == "heartbeat" and mech != "no heartbeat mechanism":
                    mech = mech.split(" (", 1)[0]
                cell += f" <br>_{mech}_"
            cells.append(cell)
        out.append(f"| {client} | " + " | ".join(cells) + " |")
    return out


def _hung_peer_section(results: dict[str, Any]) -> list[str]:
    rows = [r for r in results["rows"] if r["situation"] == "hung-peer"]
    if not rows:
        return []
    hp = results.get("hung_peer", {})
    batch: dict[str, Any] = next((b for b in results["batches"] if b["situation"] == "hung-peer"), {})
    hb_env = " ".join(f"{k}={v}" for k, v in (hp.get("heartbeat_env") or {}).items())
    hb_note = (
        f"`{hb_env}` added"
        if hb_env
        else "no heartbeat variable: this kapatch does not know `KAPATCH_HEARTBEAT`, so those rows fail"
    )
    out = [
        f"## {TITLES['hung-peer']}",
        "",
        "TCP keepalive is answered by the peer's kernel, so a peer whose process hangs keeps "
        "answering probes. Each client connects and proves its connection; then the server "
        "process at the other end is frozen with SIGSTOP (by pid; SIGCONT after the batch, "
        "in `finally`): HTTP, redis-server, gRPC and MariaDB whole; for PostgreSQL the "
        "backend serving the client's connection (the process at its other end; the "
        "postmaster still accepts, so a replaced connection gets a live backend). The "
        f"client stays idle {hp.get('idle_before_call_s', 3):g} s more (past the heartbeat "
        "interval), then makes an ordinary call (`GET /ok`, `GET key`, `SELECT 1`, "
        "`/lab.Lab/Ok`); times are from that call. Every row runs with kapatch's keepalive "
        f"policy; the heartbeat rows with {hb_note}; the read-timeout rows set "
        f"{hp.get('app_timeout_s', 3):g} s through their library's own API (in italics). "
        f"Tolerance {hp.get('tolerance_s', 1.5):g} s.",
        "",
        f"Frozen: {'; '.join(batch.get('frozen', [])) or '-'}. Check: {batch.get('silence_probe', '-')}.",
        "",
        *hung_peer_table(results),
        "",
        "| client | layer | what catches it | outcome | error the application saw "
        "| the client's socket at the cap (`ss`) | expected |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            "| "
            + " | ".join(
                [
                    r["client"],
                    r["layer"],
                    r["mechanism"] + ("" if r["kapatch_loaded"] else "; kapatch not loaded"),
                    hung_cell(r),
                    _error(r),
                    r["kernel_at_cap"] if r["status"] == "hanging" else "-",
                    r["verdict"]["expect"],
                ]
            )
            + " |"
        )
    out.append("")
    return out


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
        + "; ".join(
            sorted({b["silence_probe"] for b in results["batches"] if b["situation"] != "hung-peer"})
        ),
        f"- Rows meeting the expectation: {ok}/{len(rows)}. Wall time of the whole lab: "
        f"{results['wall_s']:g} s.",
        "",
    ]
    for situation in ("keepalive", "user-timeout", "respect"):  # hung-peer: its own section
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
    out += _hung_peer_section(results)
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
