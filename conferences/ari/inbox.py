"""The worker's moderation requests, received on a thread and an event loop of their own.

channels_redis took four Redis round trips to receive one message (its
cleanup script, BZPOPMIN, the backup entry, then a cleaner the next receive
waits for; conferencesite/layers.py takes two for this plain channel), and
each of them waits its turn in the worker's event loop. When
every moderator of a busy PBX clicks at once, that loop is busy with the
clicks already received (their REST calls, database hops and broadcasts): the
tenth room's *mute all* reached its lane 300–450 ms after the web process had
sent it (bench/busy.py). Here the receiving runs beside that loop, with a
layer instance of its own, and hands each request over in one callback, in
the order Redis gave them.

A layer that lives in this process only (the in-memory layer of the embedded
default and of tests) must be read from the loop it belongs to: the worker
reads it there itself (``needs_own_loop``).
"""

import asyncio
import contextlib
import logging
import threading

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import InMemoryChannelLayer, channel_layers

logger = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds after a failed receive (Redis down)
STOP_WAIT = 5.0


def needs_own_loop(layer):
    """Whether ``layer`` is read through an inbox: one that other processes send to (not in-memory)."""
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


class CommandInbox:
    """Receives ``channel``'s messages on a thread; ``deliver(message)`` runs in ``loop`` for each, in order."""

    def __init__(self, channel, deliver, loop, *, name="ari-commands", alias=DEFAULT_CHANNEL_LAYER):
        self.channel = channel
        self.deliver = deliver
        self.loop = loop
        self.alias = alias
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._own_loop = None
        self._task = None
        self._started = threading.Event()

    def start(self):
        self.thread.start()
        self._started.wait(STOP_WAIT)

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        self._own_loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        layer = channel_layers.make_backend(self.alias)  # this loop's own connections
        try:
            await self._receive(layer)
        except asyncio.CancelledError:
            pass
        finally:
            with contextlib.suppress(Exception):
                close = getattr(layer, "close_pools", None)
                if close is not None:
                    await close()

    async def _receive(self, layer):
        while True:
            try:
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("%s: channel layer receive failed (%s); retrying", self.channel, exc)
                await asyncio.sleep(RETRY_AFTER)
                continue
            try:
                self.loop.call_soon_threadsafe(self.deliver, message)
            except RuntimeError:  # the worker's loop is closed: it stopped
                return

    def stop(self):
        """End the receiving (a message taken but not handed over stays in Redis's backup for the next
        receiver); returns once the thread ended, or after STOP_WAIT."""
        own_loop, task = self._own_loop, self._task
        if own_loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # that loop ended already
                own_loop.call_soon_threadsafe(task.cancel)
        if self.thread.is_alive():
            self.thread.join(STOP_WAIT)
