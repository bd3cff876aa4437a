"""``manage.py ari_worker`` with timing probes, for bench/run.py.

Runs exactly the project's worker command (same code path, same arguments),
after wrapping two functions at import time, without changing product code:

- ``AriWorker.process_event``: when each ARI event's processing started and how
  long it took (the processor handles one item at a time, so this is the
  worker's service time per event);
- ``conferences.broadcast.send_to_room``: when a service produced each room
  frame (after its transaction committed);
- the channel layer's ``group_send`` (RedisChannelLayer, RedisPubSubLoopLayer,
  InMemoryChannelLayer): when each frame was handed to the layer and how long
  that took;
- ``AriWorker.handle_command``: when each moderation request's processing
  started and how long it took (its action, room and request id);
- ``AriClient.request``: each REST call's method, path (ids left out), start
  and duration, as the worker saw it (Asterisk's answer time under load).

The records are written as JSON to ``$BENCH_PROBE_OUT`` when the process exits
(SIGTERM stops the worker cleanly). Missing attributes (the code under
measurement changed) only disable that probe. With ``$BENCH_RECORD_EVENTS``
set, every ARI event is also appended to that file as one JSON line, as
tests/live.py's ARI_RECORD_EVENTS does (material for tests/fixtures/ari/).

With ``$BENCH_PROFILE_OUT`` set, every thread of the worker (the event loop,
the database thread, the ARI client's REST threads) runs under a cProfile
profiler of its own, and their merged stats are dumped to that file at exit;
that slows the worker down.

The product is imported from ``$BENCH_CODE_ROOT`` (another checkout, see
bench/infra.py's ``use_code``), else from this one.
"""

import atexit
import contextvars
import cProfile
import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The ARI events the conference application handles, for code that has no ``on_<type>`` methods
# (bench/capacity.py's stand-in counts its load in these).
HANDLED = {
    "StasisStart",
    "StasisEnd",
    "ChannelEnteredBridge",
    "ChannelLeftBridge",
    "ChannelTalkingStarted",
    "ChannelTalkingFinished",
    "ChannelDestroyed",
    "ChannelDtmfReceived",
    "PlaybackFinished",
    "BridgeDestroyed",
}

events = []  # [type, channel id, asterisk timestamp, started (epoch s), duration (s), has a handler]
sends = []  # [conference id, frame type, seq, participant caller number, started (epoch s), duration (s)]
group_sends = []  # [group, message type, frame type, seq, started (epoch s), duration (s)]
# [action, conference id, request id, started (epoch s), duration (s), the request's expires_at (the web
# process sent it at expires_at - conferences.moderation.REQUEST_TTL)]
commands = []
rest = []  # [method, path with ids left out, started (epoch s), duration (s), status or error class]
hops = []  # [store function, started (epoch s), duration (s): the thread's wait included]
# [store function, handed to the pool, started in its thread, ended there, back in the loop] (epoch s)
hop_steps = []
_hop_name = contextvars.ContextVar("hop_name", default=None)
probes = []


def _wrap_process_event():
    from conferences.ari import worker

    original = getattr(worker.AriWorker, "process_event", None)
    if original is None:
        return

    record_to = os.environ.get("BENCH_RECORD_EVENTS")

    async def process_event(self, event):
        started, clock = time.time(), time.perf_counter()
        if record_to:
            with open(record_to, "a") as fh:  # noqa: ASYNC230 (a recording aid, off in measured runs)
                fh.write(json.dumps(event) + "\n")
        try:
            return await original(self, event)
        finally:
            channel = event.get("channel") or {}
            kind = event.get("type")
            handled = hasattr(getattr(self, "app", None), f"on_{kind}") or kind in HANDLED
            events.append(
                [
                    event.get("type"),
                    channel.get("id"),
                    event.get("timestamp"),
                    started,
                    time.perf_counter() - clock,
                    handled,
                ]
            )

    worker.AriWorker.process_event = process_event
    probes.append("AriWorker.process_event")


def _wrap_handle_command():
    from conferences.ari import worker

    original = getattr(worker.AriWorker, "handle_command", None)
    if original is None:
        return

    async def handle_command(self, command, *args, **kwargs):
        started, clock = time.time(), time.perf_counter()
        try:
            return await original(self, command, *args, **kwargs)
        finally:
            command = command if isinstance(command, dict) else {}
            commands.append(
                [
                    command.get("action"),
                    command.get("conference_id"),
                    command.get("request_id"),
                    started,
                    time.perf_counter() - clock,
                    command.get("expires_at"),
                ]
            )

    worker.AriWorker.handle_command = handle_command
    probes.append("AriWorker.handle_command")


def _rest_path(path):
    """``/channels/<id>/mute`` -> ``/channels/*/mute``: the call's kind, not its ids."""
    parts = [part for part in str(path).split("?")[0].split("/") if part]
    return "/" + "/".join(part if index % 2 == 0 else "*" for index, part in enumerate(parts))


def _method(module_name, class_name, name):
    """``(module, its class's method)`` of the code under measurement, or None where it has no such method."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    original = getattr(getattr(module, class_name, None), name, None)
    return None if original is None else (module, original)


def _wrap_rest():
    found = _method("conferences.ari.client", "AriClient", "request")
    if found is None:
        return
    client, original = found

    async def request(self, method, path, *args, **kwargs):
        started, clock = time.time(), time.perf_counter()
        outcome = "ok"
        try:
            return await original(self, method, path, *args, **kwargs)
        except Exception as exc:
            outcome = getattr(exc, "status", None) or exc.__class__.__name__
            raise
        finally:
            rest.append([method, _rest_path(path), started, time.perf_counter() - clock, outcome])

    client.AriClient.request = request
    probes.append("AriClient.request")


def _wrap_db():
    found = _method("conferences.ari.effects", "Effects", "db")
    if found is None:
        return
    effects, original = found

    async def db(self, func, /, *args, **kwargs):
        started, clock = time.time(), time.perf_counter()
        _hop_name.set(getattr(func, "__name__", str(func)))
        try:
            return await original(self, func, *args, **kwargs)
        finally:
            hops.append([getattr(func, "__name__", str(func)), started, time.perf_counter() - clock])

    effects.Effects.db = db
    probes.append("Effects.db")
    found = _method("conferences.dbthreads", "DatabaseThreads", "run")
    if found is None:  # a baseline from before the worker had database threads of its own
        return
    dbthreads, run = found

    async def timed_run(self, func):
        steps = [_hop_name.get(), time.time(), None, None, None]

        def timed():
            steps[2] = time.time()
            try:
                return func()
            finally:
                steps[3] = time.time()

        try:
            return await run(self, timed)
        finally:
            steps[4] = time.time()
            hop_steps.append(steps)

    dbthreads.DatabaseThreads.run = timed_run


def _wrap_send_to_room():
    from conferences import broadcast

    original = getattr(broadcast, "send_to_room", None)
    if original is None:
        return

    def send_to_room(conference_id, frame, *args, **kwargs):
        started, clock = time.time(), time.perf_counter()
        try:
            return original(conference_id, frame, *args, **kwargs)
        finally:
            participant = (frame.get("participant") or {}) if isinstance(frame, dict) else {}
            sends.append(
                [
                    conference_id,
                    frame.get("type") if isinstance(frame, dict) else None,
                    frame.get("seq") if isinstance(frame, dict) else None,
                    participant.get("caller_number"),
                    started,
                    time.perf_counter() - clock,
                ]
            )

    broadcast.send_to_room = send_to_room
    probes.append("broadcast.send_to_room")


def _wrap_group_send():
    """Time the channel layer's own group_send, whichever layer class the settings chose."""
    classes = []
    try:
        from channels_redis.core import RedisChannelLayer

        classes.append(RedisChannelLayer)
    except ImportError:
        pass
    try:
        from channels_redis.pubsub import RedisPubSubLoopLayer

        classes.append(RedisPubSubLoopLayer)
    except ImportError:
        pass
    from channels.layers import InMemoryChannelLayer

    classes.append(InMemoryChannelLayer)
    for cls in classes:
        original = cls.__dict__.get("group_send")
        if original is None:
            continue

        async def group_send(self, group, message, _original=original):
            started, clock = time.time(), time.perf_counter()
            try:
                return await _original(self, group, message)
            finally:
                frame = message.get("frame") or {}
                group_sends.append(
                    [
                        group,
                        message.get("type"),
                        message.get("kind") or frame.get("type"),
                        message.get("seq") if message.get("seq") is not None else frame.get("seq"),
                        started,
                        time.perf_counter() - clock,
                    ]
                )

        cls.group_send = group_send
        probes.append(f"{cls.__name__}.group_send")


def _profile_threads():
    """A cProfile profiler for this thread and one for every thread started from now on."""
    import threading

    profilers = [cProfile.Profile()]

    def start_in_new_thread(frame, event, arg):
        # The first profile event of a new thread: give it its own profiler, which replaces this hook.
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start_in_new_thread)
    profilers[0].enable()
    return profilers


def _dump_profiles(profilers, path):
    import pstats

    profilers[0].disable()
    stats = pstats.Stats(profilers[0])
    for profiler in profilers[1:]:
        try:
            stats.add(profiler)
        except (TypeError, ValueError):  # a thread that never ran profiled code
            continue
    stats.dump_stats(path)


def _dump():
    path = os.environ.get("BENCH_PROBE_OUT")
    if path:
        Path(path).write_text(
            json.dumps(
                {
                    "probes": probes,
                    "events": events,
                    "sends": sends,
                    "group_sends": group_sends,
                    "commands": commands,
                    "rest": rest,
                    "hops": hops,
                    "hop_steps": hop_steps,
                }
            )
        )


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("BENCH_CODE_ROOT") or str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conferencesite.settings")
    import django

    django.setup()
    _wrap_process_event()
    _wrap_handle_command()
    _wrap_rest()
    _wrap_db()
    _wrap_send_to_room()
    _wrap_group_send()
    atexit.register(_dump)
    from django.core.management import execute_from_command_line

    profile_to = os.environ.get("BENCH_PROFILE_OUT")
    profilers = _profile_threads() if profile_to else []
    try:
        execute_from_command_line(["manage.py", "ari_worker", *sys.argv[1:]])
    finally:
        if profilers:
            _dump_profiles(profilers, profile_to)
