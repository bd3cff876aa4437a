"""Turns what the clients, the worker probe and /proc recorded into figures (pure functions).

Matching. Every simulated caller has a unique caller number and a channel id
chosen by the bench. Asterisk's own timestamps come from the ``clock`` relay
client: ``(event type, channel id) -> [timestamps]``.

- relay viewer: the raw ChannelEnteredBridge / ChannelLeftBridge /
  ChannelTalkingStarted frame of a bench channel; latency = receipt - its own
  ``timestamp``.
- project viewer: ``participant.joined`` (caller number -> channel) <->
  ChannelEnteredBridge, ``participant.left`` <-> ChannelLeftBridge,
  ``participant.updated`` whose talking went false -> true <-> the latest
  ChannelTalkingStarted of that channel not after the receipt (and not already
  matched by this viewer).

The headline relay figures use the same events the project delivered (so
both sides are measured on the same calls); per-kind figures are given too.
"""

import bisect
import math
import statistics
from collections import defaultdict

from bench.clients import ari_time

KIND_OF = {
    "ChannelEnteredBridge": "join",
    "ChannelLeftBridge": "leave",
    "ChannelTalkingStarted": "talk",
}
PROJECT_CODE = {"j": ("join", "ChannelEnteredBridge"), "l": ("leave", "ChannelLeftBridge")}


def pct(values, p):
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values):
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def clock_index(clock_results):
    index = defaultdict(list)
    frames = 0
    for result in clock_results:
        frames += result["frames"]
        for _t, kind, channel, _bridge, stamp in result["recs"]:
            index[(kind, channel)].append(stamp)
    for stamps in index.values():
        stamps.sort()
    return index, frames


def project_samples(viewer, clock, number_to_channel):
    """[(kind, latency ms, event key)] of one project viewer, and how many frames did not match."""
    samples, unmatched = [], 0
    last_talk = {}
    for rec in viewer["recs"]:
        now, code = rec[0], rec[1]
        if code in PROJECT_CODE:
            channel = number_to_channel.get(rec[3])
            if channel is None:
                continue
            kind, ari_type = PROJECT_CODE[code]
            stamps = clock.get((ari_type, channel))
            if not stamps:
                unmatched += 1
                continue
            samples.append((kind, (now - stamps[0]) * 1000, (kind, channel, stamps[0])))
        elif code == "t":
            channel = number_to_channel.get(rec[3])
            if channel is None:
                continue
            stamps = clock.get(("ChannelTalkingStarted", channel), [])
            index = bisect.bisect_right(stamps, now) - 1
            if index < 0 or index <= last_talk.get(channel, -1):
                unmatched += 1
                continue
            last_talk[channel] = index
            samples.append(("talk", (now - stamps[index]) * 1000, ("talk", channel, stamps[index])))
    return samples, unmatched


def seqs_received(viewer, start, final):
    seen = set()
    for rec in viewer["recs"]:
        code, seq = rec[1], rec[2]
        if code in ("s", "g") or seq is None:
            continue
        if start < seq <= final:
            seen.add(seq)
    return len(seen)


def completion_project(viewer, wanted):
    present = set()
    for rec in viewer["recs"]:
        now, code = rec[0], rec[1]
        if code == "s":
            present = set(rec[3])
        elif code == "j":
            present.add(rec[3])
        elif code == "l":
            present.discard(rec[3])
        else:
            continue
        if wanted <= present:
            return now
    return None


def completion_relay(viewer, wanted_channels):
    present = set()
    for now, kind, channel, _bridge, _stamp in viewer["recs"]:
        if channel not in wanted_channels:
            continue
        if kind == "ChannelEnteredBridge":
            present.add(channel)
        elif kind == "ChannelLeftBridge":
            present.discard(channel)
        if wanted_channels <= present:
            return now
    return None


def analyze_phase(phase):
    callers = phase["callers"]
    number_to_channel = {c["number"]: c["channel"] for c in callers}
    bench_channels = set(number_to_channel.values())
    relay_viewers = [r for r in phase["relay"] if r["kind"] == "relay"]
    clock_results = [r for r in phase["relay"] if r["kind"] == "clock"]
    project_viewers = phase["project"]
    clock, clock_frames = clock_index(clock_results)
    clock_keys = {
        (KIND_OF[kind], channel, stamp)
        for (kind, channel), stamps in clock.items()
        if channel in bench_channels
        for stamp in stamps
    }

    # --- the project -------------------------------------------------------------------
    project_by_kind = defaultdict(list)
    delivered_keys = set()
    unmatched = 0
    expected = received = 0
    gaps = resyncs = dups = closed = 0
    recovery = []
    for viewer in project_viewers:
        samples, missing = project_samples(viewer, clock, number_to_channel)
        unmatched += missing
        for kind, latency, key in samples:
            project_by_kind[kind].append(latency)
            delivered_keys.add(key)
        final = phase["final_seqs"].get(viewer["room"])
        start = viewer["start_seq"]
        if final is not None and start is not None:
            expected += max(0, final - start)
            received += seqs_received(viewer, start, final)
        gaps += viewer["gaps"]
        resyncs += viewer["resyncs"]
        dups += viewer["dups"]
        recovery.extend(s * 1000 for s in viewer["recovery"])
        if viewer["closed"] is not None:
            closed += 1
    project_all = [v for values in project_by_kind.values() for v in values]
    project_frames = [viewer["frames"] for viewer in project_viewers]

    # --- the relay, on the same events ---------------------------------------------------------
    relay_by_kind = defaultdict(list)
    relay_same = []
    relay_delivered = 0
    relay_frames = []
    for viewer in relay_viewers:
        relay_frames.append(viewer["frames"])
        keys = set()
        for now, kind, channel, _bridge, stamp in viewer["recs"]:
            if channel not in bench_channels:
                continue
            key = (KIND_OF[kind], channel, stamp)
            if key in keys:
                continue
            keys.add(key)
            latency = (now - stamp) * 1000
            relay_by_kind[key[0]].append(latency)
            if key in delivered_keys:
                relay_same.append(latency)
        relay_delivered += len(keys & clock_keys)

    metrics = {
        "viewers": len(project_viewers),
        "relay_viewers": len(relay_viewers),
        "room_events": sum(phase["final_seqs"][s] - phase["start_seqs"].get(s, 0) for s in phase["final_seqs"]),
        "ari_frames": clock_frames,
        "call_events": len(clock_keys),
        "matched_events": len(delivered_keys),
        "project": {
            **summary(project_all),
            "by_kind": {k: summary(v) for k, v in sorted(project_by_kind.items())},
            "expected": expected,
            "received": received,
            "delivered_pct": 100.0 * received / expected if expected else None,
            "gaps": gaps,
            "resyncs": resyncs,
            "dups": dups,
            "recovery": summary(recovery),
            "closed": closed,
            "unmatched": unmatched,
            "frames_per_viewer": statistics.median(project_frames) if project_frames else 0,
        },
        "relay": {
            **summary(relay_same),
            "by_kind": {k: summary(v) for k, v in sorted(relay_by_kind.items())},
            "delivered_pct": 100.0 * relay_delivered / (len(clock_keys) * len(relay_viewers))
            if clock_keys and relay_viewers
            else None,
            "frames_per_viewer": statistics.median(relay_frames) if relay_frames else 0,
            "clock_frames": clock_frames,
        },
    }
    metrics["ratio"] = {k: ratio(metrics["project"][k], metrics["relay"][k]) for k in ("p50", "p99", "max")}

    hold = phase.get("hold")
    if hold:
        exact = sum(
            1
            for roster in hold["rosters"].values()
            if roster["closed"] is None and roster["numbers"] == hold["truth"].get(roster["room"])
        )
        metrics["hold_exact"] = (exact, len(hold["rosters"]))
        metrics["hold_caught_up_ms"] = hold.get("caught_up_seconds", 0) * 1000

    final = phase.get("final")
    if final:
        exact = sum(
            1
            for roster in final["rosters"].values()
            if roster["closed"] is None
            and roster["numbers"] == final["truth"].get(roster["room"])
            and roster["seq"] == final["seqs"].get(roster["room"])
        )
        metrics["final_exact"] = (exact, len(final["rosters"]))

    burst = phase.get("burst")
    if burst:
        wanted_numbers = set(burst["numbers"])
        wanted_channels = {number_to_channel[n] for n in burst["numbers"]}
        t0 = burst["t0"]
        project_done = [completion_project(v, wanted_numbers) for v in project_viewers]
        relay_done = [completion_relay(v, wanted_channels) for v in relay_viewers]
        entered = [
            clock[("ChannelEnteredBridge", ch)][0] for ch in wanted_channels if clock.get(("ChannelEnteredBridge", ch))
        ]

        def times(done):
            finished = [(t - t0) * 1000 for t in done if t is not None]
            return {**summary(finished), "incomplete": sum(1 for t in done if t is None)}

        metrics["burst"] = {
            "callers": len(wanted_numbers),
            "originate_ms": burst["originate_seconds"] * 1000,
            "in_bridge_ms": (max(entered) - t0) * 1000 if len(entered) == len(wanted_channels) else None,
            "in_bridge_count": len(entered),
            "project": times(project_done),
            "relay": times(relay_done),
        }
    return metrics


# --- the worker probe -------------------------------------------------------------------------


def analyze_worker(probe, phase, project_viewers=None):
    """The worker's own timings inside one phase's time window."""
    start, end = phase["t_start"], phase["t_end"]
    events = [e for e in probe.get("events", []) if start <= e[3] <= end]
    sends = [s for s in probe.get("sends", []) if start <= s[4] <= end]
    group_sends = [g for g in probe.get("group_sends", []) if start <= g[4] <= end]
    if not events:
        return None
    # Events without a handler (ChannelVarset, ...) cost next to nothing: the service
    # figures are over the events the application handles.
    handled = [e for e in events if len(e) < 6 or e[5]]
    durations = [e[4] * 1000 for e in handled]
    total = sum(e[4] for e in events)
    waits = [(e[3] - ari_time(e[2])) * 1000 for e in handled if e[2]]
    span = max(e[3] + e[4] for e in events) - min(e[3] for e in events)
    result = {
        "events": len(events),
        "handled": len(handled),
        "service": summary(durations),
        "wait": summary(waits),
        "observed_per_s": len(handled) / span if span > 0 else None,
        "capacity_per_s": len(handled) / total if total > 0 else None,
        "group_send": summary([g[5] * 1000 for g in group_sends]),
        "group_sends": len(group_sends),
        "sends": len(sends),
        "by_type": {},
    }
    by_type = defaultdict(list)
    for e in handled:
        by_type[e[0]].append(e[4] * 1000)
    result["by_type"] = {k: summary(v) for k, v in sorted(by_type.items(), key=lambda kv: -sum(kv[1]))[:8]}

    # Where the time of a join goes: Asterisk -> worker -> frame committed -> group_send -> viewers.
    callers = {c["channel"]: c for c in phase["callers"]}
    committed = {(s[0], s[2]): s for s in sends if s[1] == "participant.joined"}
    handed = {(g[0], g[3]): g for g in group_sends if g[2] == "participant.joined"}
    receipts = defaultdict(list)
    seq_of = {}
    for viewer in project_viewers or []:
        for rec in viewer["recs"]:
            if rec[1] == "j":
                receipts[rec[3]].append(rec[0])
                seq_of[rec[3]] = rec[2]
    parts = defaultdict(list)
    for e in events:
        caller = callers.get(e[1])
        if e[0] != "ChannelEnteredBridge" or caller is None or not e[2]:
            continue
        number, pk = caller["number"], caller["room_pk"]
        seq = seq_of.get(number)
        got = sorted(receipts.get(number, []))
        if seq is None or not got:
            continue
        stamp = ari_time(e[2])
        parts["asterisk_to_worker"].append((e[3] - stamp) * 1000)
        commit = committed.get((pk, seq))
        if commit is not None:
            parts["worker_to_commit"].append((commit[4] - e[3]) * 1000)
        send = next((g for (group, s), g in handed.items() if s == seq and group.endswith(f".{pk}")), None)
        if send is not None:
            if commit is not None:
                parts["commit_to_group_send"].append((send[4] - commit[4]) * 1000)
            parts["group_send"].append(send[5] * 1000)
            done = send[4] + send[5]
            parts["send_to_first_viewer"].append((got[0] - done) * 1000)
            parts["send_to_median_viewer"].append((got[len(got) // 2] - done) * 1000)
            parts["send_to_last_viewer"].append((got[-1] - done) * 1000)
        parts["total_median_viewer"].append((got[len(got) // 2] - stamp) * 1000)
    result["join_breakdown"] = {k: summary(v) for k, v in parts.items()}
    return result


# --- the web process under cProfile ----------------------------------------------------------------

# Where a function's own time is counted, by the path of its file (first match wins).
PROFILE_AREAS = [
    ("autobahn", "autobahn (WebSocket framing)"),
    ("twisted", "twisted (reactor, transports)"),
    ("daphne", "daphne (ASGI server)"),
    ("channels_redis", "channels_redis (layer)"),
    ("redis", "redis-py"),
    ("msgpack", "msgpack"),
    ("channels", "channels (consumers, dispatch)"),
    ("asgiref", "asgiref"),
    ("django", "django"),
    ("asyncio", "asyncio (event loop, tasks)"),
    ("conferences", "the project (conferences/)"),
    ("json", "json"),
]
# Entry points whose cumulative time shows what the process spent it on.
PROFILE_ENTRIES = [
    ("consumers.py", "room_event", "ConferenceConsumer.room_event (a room frame to one socket)"),
    ("consumer.py", "dispatch", "AsyncConsumer.dispatch (every channel-layer message)"),
    ("core.py", "receive", "RedisChannelLayer.receive"),
    ("server.py", "handle_reply", "daphne Server.handle_reply (ASGI send → protocol)"),
    ("ws_protocol.py", "handle_reply", "daphne WebSocketProtocol.handle_reply"),
    ("protocol.py", "sendMessage", "autobahn sendMessage"),
    ("ws_protocol.py", "onConnect", "daphne WebSocketProtocol.onConnect (handshakes)"),
    ("consumers.py", "connect", "ConferenceConsumer.connect"),
    ("base_events.py", "_run_once", "asyncio loop iterations"),
]


def web_profile(path, top=25):
    """Own time by area, the main entry points' cumulative time, and the top functions, from a cProfile dump."""
    import pstats

    if path is None:
        return None
    try:
        stats = pstats.Stats(str(path))
    except (OSError, TypeError, EOFError) as exc:
        return {"error": f"no profile ({exc})"}
    total = stats.total_tt
    areas = defaultdict(float)
    functions = []
    entries = {}
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        area = "other (Python built-ins, C calls)"
        if name == "<method 'poll' of 'select.epoll' objects>":
            area = "idle (waiting in epoll)"
        elif name == "<method 'get' of '_queue.SimpleQueue' objects>":
            area = "idle (a pool thread waiting for work)"
        for needle, label in PROFILE_AREAS:
            if f"/{needle}/" in filename or filename.endswith(f"/{needle}.py"):
                area = label
                break
        areas[area] += tt
        short = filename.split("site-packages/")[-1].split("/work/")[-1]
        if not area.startswith("idle"):
            functions.append({"function": f"{short}:{line}({name})", "calls": nc, "own_s": tt, "cum_s": ct})
        for file_end, func, label in PROFILE_ENTRIES:
            if name == func and filename.endswith("/" + file_end):
                entry = entries.setdefault(label, {"calls": 0, "cum_s": 0.0})
                entry["calls"] += nc
                entry["cum_s"] = max(entry["cum_s"], ct)
    functions.sort(key=lambda f: f["own_s"], reverse=True)
    return {
        "total_s": total,
        "areas": sorted(({"area": k, "own_s": v} for k, v in areas.items()), key=lambda a: a["own_s"], reverse=True),
        "entries": [{"entry": label, **entries[label]} for _f, _n, label in PROFILE_ENTRIES if label in entries],
        "top": functions[:top],
    }
