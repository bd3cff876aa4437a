"""The sections bench/web.py writes into docs/performance.md (pure functions of its results).

``render(section, measured, ...)`` with ``measured`` = ``[(label, results)]``, one
per checkout measured; ``connect-storm``, ``fanout-needs`` and ``asgi-servers``.
"""

import time

from bench.report import beside_runs, fmt, keep_prose, machine_lines, pair, table, trio

STORM_TARGET_MS = 5000  # issue 13: every page has its snapshot within 5 s, none dropped

# What each server lacks next to what the product relies on today (read from each one's options and code).
LACKS = {
    "daphne": "the 1 MiB outbound limit only through the project's patch (conferencesite/daphne_limits.py, pinned "
    "to 4.2.3); a 5 s handshake timeout (`--websocket_connect_timeout`) that drops handshakes of a loaded process; "
    "`-b/-p` give Twisted's listen backlog of 50 (an endpoint string `-e tcp:…:backlog=N` is needed for more)",
    "uvicorn": "no outbound byte limit (sends wait on the socket's write buffer: the hub's `await send` of a "
    "non-reading page waits for it); `--ws-max-size` (16 MiB) and `--ws-max-queue`; proxy headers from "
    "`--forwarded-allow-ips`; pings every 20 s by default",
    "uvicorn-sansio": "as uvicorn (websockets' Sans-I/O protocol: no per-connection task)",
    "uvicorn-wsproto": "as uvicorn; `--ws-max-size` applies; wsproto is pure Python",
    "hypercorn": "no outbound byte limit; `websocket_max_message_size` 16 MiB; an application queue of 10 "
    "messages per connection (`max_app_queue_size`); proxy headers only through its ProxyFixMiddleware",
    "granian": "no outbound byte limit visible to the application; Rust I/O with Python per message; "
    "`--backpressure`; proxy headers not handled (a reverse proxy's X-Forwarded-For needs middleware)",
}


def lacks(spec):
    server, _, variant = spec.partition("+")
    text = LACKS.get(server, "")
    return f"{text} (+persistent: `conn_max_age=60`)" if variant else text


PROSE = {
    "connect-storm": "_Placeholder: where a connection's time goes (profile) and what would absorb the storm._",
    "fanout-needs": "_Placeholder: what the fan-out figures say against the page-needs relay._",
    "asgi-servers": "_Placeholder: the server the numbers favour, and why._",
}

TITLES = {
    "connect-storm": "Connect storm: pages opened within one second",
    "fanout-needs": "Fan-out against the page-needs relay",
    "asgi-servers": "ASGI servers",
}


def runs(measured):
    """``[(column name, server, config)]`` over every checkout and server measured."""
    out = []
    for label, results in measured:
        for config in results["configs"]:
            out.append((f"{label} `{results['machine']['commit']}`, {config['server']}", config["server"], config))
    return out


def mark(ok):
    return "✅ " if ok else "❌ "


def storm_rows(measured):
    rows = []
    for name, _server, config in runs(measured):
        for s in config["storms"]:
            who = "page-needs relay" if s["target"] == "needs" else f"project, {s['webs']} web"
            ok = None
            if s["target"] == "project":
                ok = s["all_ms"] is not None and s["all_ms"] <= STORM_TARGET_MS and not s["dropped"] + s["refused"]
            codes = ", ".join(f"{k}: {v}" for k, v in s["codes"].items()) or "–"
            if s.get("dropped_after", {}).get("p50") is not None:
                codes += f" (dropped after {trio(s['dropped_after'])} ms)"
            all_in = fmt(s["all_ms"]) if s["all_ms"] is not None else f"not all ({s['ready']:,} of {s['pages']:,})"
            all_in += beside_runs(s.get("runs") or ())  # --repeat: this is the median run; every run's beside it
            rows.append(
                [
                    name,
                    who,
                    f"{s['pages']:,}",
                    f"{s['ready']:,}",
                    trio(s["per_page"]),
                    ("" if ok is None else mark(ok)) + all_in,
                    s["refused"],
                    s["dropped"],
                    s["waiting"],
                    codes,
                    fmt(s["cpu"].get("web"), 1) if s["target"] == "project" else fmt(s["cpu"].get("needs relay"), 1),
                ]
            )
    return rows


def runs_of(fanout):
    """``--repeat``: every run's ratios beside the median run's (empty for one run)."""

    def ratio(value):
        return "–" if value is None else f"{value:.2f}×"

    return beside_runs(fanout.get("runs") or (), lambda r: f"{ratio(r['ratio']['p50'])} / {ratio(r['ratio']['p99'])}")


def fanout_rows(measured):
    rows = []
    for name, _server, config in runs(measured):
        for f in config["fanouts"]:
            p, n, r, ratio = f["project"], f["needs"], f["raw"], f["ratio"]
            target_p50, target_p99 = (2.0, 1.5) if f["pages"] <= 200 else (None, 2.0)
            ok50 = None if target_p50 is None or ratio["p50"] is None else ratio["p50"] <= target_p50
            ok99 = None if ratio["p99"] is None else ratio["p99"] <= target_p99
            web_rss = sum(m["rss_mb"] for m in f["memory"]["web"])
            rows.append(
                [
                    name,
                    f"{f['pages']:,}",
                    pair(p),
                    pair(n),
                    ("" if ok50 is None else mark(ok50))
                    + ("–" if ratio["p50"] is None else f"{ratio['p50']:.2f}×")
                    + " / "
                    + ("" if ok99 is None else mark(ok99))
                    + ("–" if ratio["p99"] is None else f"{ratio['p99']:.2f}×")
                    + runs_of(f),
                    f"{pair(r)} ({f['raw_clients']:,})",
                    f"{fmt(p['delivered_pct'], 1)} / {fmt(n['delivered_pct'], 1)}",
                    f"{p['gaps']} / {p['resyncs']}",
                    f"{fmt(f['web_us_per_frame'])} / {fmt(f['needs_us_per_frame'])}",
                    fmt(web_rss),
                    f"{f['clients_cpu_pct']:.0f} %",
                ]
            )
    return rows


def by_kind_rows(measured):
    rows = []
    for name, _server, config in runs(measured):
        for f in config["fanouts"]:
            for kind in ("join", "talk", "leave"):
                rows.append(
                    [
                        name,
                        f"{f['pages']:,}",
                        kind,
                        trio(f["project"]["by_kind"].get(kind)),
                        trio(f["needs"]["by_kind"].get(kind)),
                        trio(f["raw"]["by_kind"].get(kind)),
                    ]
                )
    return rows


def server_rows(measured):
    label, results = measured[-1]
    rows = []
    for config in results["configs"]:
        if config.get("error"):
            rows.append([config["server"], f"failed: {config['error'][:150]}", "", "", "", "", lacks(config["server"])])
            continue
        storms = {(s["pages"], s["webs"]): s for s in config["storms"] if s["target"] == "project"}
        fanouts = {f["pages"]: f for f in config["fanouts"]}
        big = max(storms, default=None, key=lambda k: (k[1] == 1, k[0]))
        storm = storms.get(big) if big else None
        f200, f1000 = fanouts.get(200), fanouts.get(1000)
        top = f1000 or f200
        rows.append(
            [
                config["server"],
                "–"
                if storm is None
                else f"{storm['pages']:,}: {storm['ready']:,} ready, all in "
                f"{fmt(storm['all_ms'])} ms, p99 {fmt(storm['per_page']['p99'])}",
                "–" if f200 is None else f"{pair(f200['project'])} ({pair(f200['needs'])})",
                "–" if f1000 is None else f"{pair(f1000['project'])} ({pair(f1000['needs'])})",
                "–" if top is None else fmt(top["web_us_per_frame"]),
                "–" if f1000 is None else fmt(sum(m["rss_mb"] for m in f1000["memory"]["web"])),
                lacks(config["server"]),
            ]
        )
    return rows


def short(frame):
    """A py-spy frame ``function (path/to/file.py:line)`` with the path cut to its package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for cut in ("site-packages/", "/work/", "python3.11/"):
        if cut in where:
            where = where.split(cut, 1)[1]
    return f"`{name}` ({where})" if where else f"`{name}`"


def profile_lines(measured):
    out = []
    for name, _server, config in runs(measured):
        for s in config["storms"]:
            prof = s.get("profile")
            if not prof:
                continue
            if prof.get("error") or not prof.get("samples"):
                out += [f"No profile of {name}'s {s['pages']:,}-page storm: {prof.get('error', 'no samples')}.", ""]
                continue
            out += profile_block(
                f"{name}: the web process under py-spy during the {s['pages']:,}-page storm "
                f"({prof['samples']:,} samples at 200 Hz over every thread; idle waits are not sampled)",
                prof,
            )
    return out


def profile_block(summary, prof):
    """A py-spy summary (bench/web.py ``profile_summary``) as a folded block: threads, own time, inclusive."""
    total = prof["samples"]
    return [
        f"<details><summary>{summary}</summary>\n",
        table(
            ["thread", "busy samples", "share"],
            [[t, f"{n:,}", f"{100 * n / total:.0f} %"] for t, n in prof["threads"]],
        ),
        "",
        table(
            ["function (own time)", "samples", "share"],
            [[short(f), f"{n:,}", f"{100 * n / total:.0f} %"] for f, n in prof["own"]],
        ),
        "",
        table(
            ["function (inclusive)", "samples", "share"],
            [[short(f), f"{n:,}", f"{100 * n / total:.0f} %"] for f, n in prof["inclusive"]],
        ),
        "\n</details>\n",
    ]


def header_lines(section, measured, command, seconds):
    machine = measured[-1][1]["machine"]
    extra = [
        ["Node.js (clients)", f"{machine.get('node', '?')}, `ws` 8.23.0 (bench/node/package-lock.json)"],
        ["load average at the start", " ".join(machine.get("loadavg") or [])],
    ]
    return [
        f"<!-- section:{section}:start -->",
        f"## {TITLES[section]}\n",
        f"> Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (the run took "
        f"{seconds / 60:.1f} min, every section of bench/web.py from the same run). Each row names the checkout "
        "(its commit) and the ASGI server; only the text between the `prose` markers is kept across runs.\n",
        table(["", ""], machine_lines(machine, extra)),
        "",
    ]


def render(section, measured, *, command, seconds, previous=""):
    first = measured[-1][1]
    out = header_lines(section, measured, command, seconds)
    if section == "connect-storm":
        out += [
            f"V pages of one room opened within one second (evenly spaced, no jitter, all in flight at once), each "
            f"a logged-in session of its own (the per-user socket cap raised for the bench's one user); each waits at "
            f"most {first['storm_timeout']:.0f} s for its snapshot. *per page*: from the start of its connection "
            "to its snapshot; *all*: from the storm's start until the last page had its snapshot (target ≤ 5 s, "
            "none refused or dropped: issue 13). *refused*: the handshake failed (connection refused or reset, "
            "an HTTP status); *dropped*: closed without a snapshot; *waiting*: neither, when its time was up. The "
            "same storm against the page-needs relay (bench/needs_relay.py: a snapshot from memory) is the "
            "floor. The production layout (PostgreSQL, Redis, the worker); the clients are one Node.js process.\n",
            table(
                [
                    "checkout, server",
                    "against",
                    "pages",
                    "with snapshot",
                    "per page p50 / p99 / max ms",
                    "all, ms",
                    "refused",
                    "dropped",
                    "waiting",
                    "close codes / errors",
                    "server CPU s",
                ],
                storm_rows(measured),
            ),
            "",
            *profile_lines(measured),
        ]
    elif section == "fanout-needs":
        out += [
            f"One room, V pages (opened 20 at a time beforehand), as many page-needs relay clients and at most "
            f"{200} raw relay clients (bench/relay.py), all in one Node.js process. {20} callers join 0.25 s "
            "apart, every other one talking, talk for 4 s, and leave 0.25 s apart. Latency from Asterisk's own "
            "event timestamp (ChannelEnteredBridge, ChannelTalkingStarted, ChannelLeftBridge) to the frame's "
            "receipt, the relays' over the same calls; *ratio* = project / page-needs relay (targets: 200 pages "
            "p50 ≤ 2×, p99 ≤ 1.5×; 1,000 pages p99 ≤ 2×). *CPU per frame*: the web process's (the page-needs "
            "relay's) CPU time in the scenario over the frames its clients received. *clients*: the Node.js "
            "process's CPU, in % of one core over the scenario (it is not the bottleneck while well under 100 %).\n",
            table(
                [
                    "checkout, server",
                    "pages",
                    "project p50 / p99 ms",
                    "page-needs relay p50 / p99 ms",
                    "ratio p50 / p99",
                    "raw relay p50 / p99 ms (clients)",
                    "delivered % project / needs",
                    "gaps / resyncs",
                    "CPU µs per frame, web / needs relay",
                    "web RSS MB",
                    "clients CPU",
                ],
                fanout_rows(measured),
            ),
            "",
            "<details><summary>By event kind (p50 / p99 / max ms)</summary>\n",
            table(
                ["checkout, server", "pages", "kind", "project", "page-needs relay", "raw relay"],
                by_kind_rows(measured),
            ),
            "\n</details>\n",
        ]
    else:
        out += [
            "Every server runs `conferencesite.asgi:application` unchanged, one process, access logs off, from the "
            "same run as the sections above (the measured checkout). *storm*: the largest one-process connect "
            "storm; *fan-out*: project p50 / p99 ms (page-needs relay's in brackets); *CPU per frame*: at the "
            "largest fan-out; *RSS*: the web process at 1,000 pages, after the scenario.\n",
            table(
                [
                    "server",
                    "storm",
                    "fan-out 200",
                    "fan-out 1,000",
                    "web CPU µs per frame",
                    "web RSS MB at 1,000",
                    "what it lacks that the product relies on",
                ],
                server_rows(measured),
            ),
            "",
        ]
    out += [
        keep_prose(previous, section, PROSE[section]),
        "",
        f"Reproduce: `{command}` (rewrites the sections connect-storm, fanout-needs and asgi-servers; `--quick` "
        "runs 200 pages only and writes nothing).",
        f"<!-- section:{section}:end -->",
    ]
    return "\n".join(out)
