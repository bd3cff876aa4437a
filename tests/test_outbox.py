"""The sockets' outbox (conferences/consumers.py, FanOutConsumer): frames handed over, never awaited.

An ASGI server's send may wait (uvicorn waits while the client's TCP buffer
is full). These tests give a consumer a send that blocks as a client that
stopped reading makes it block, and check what the room hub relies on: the
caller never waits, the order is kept, the outbox is bounded (1 MiB, then a
4008 close), a close goes after what was handed over without waiting on a
stuck client, and a failed send loses nothing but that socket's frames.
The same rules against a real server: tests/test_slow_clients.py.
"""

import asyncio

import pytest

from conferences import consumers, protocol
from conferences.consumers import FanOutConsumer


class StuckServer:
    """An ASGI send that takes frames only while ``open`` is set (a client that stops and starts reading)."""

    def __init__(self, *, open=True, fail=False):
        self.open = asyncio.Event()
        if open:
            self.open.set()
        self.fail = fail
        self.sent = []

    async def __call__(self, message):
        if message["type"] == "websocket.send":
            await self.open.wait()
            if self.fail:
                raise OSError("connection reset")
        self.sent.append(message)

    def texts(self):
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]

    def closes(self):
        return [m.get("code") for m in self.sent if m["type"] == "websocket.close"]


def socket_with(server):
    consumer = FanOutConsumer()
    consumer.scope = {"type": "websocket", "path": "/ws/conferences/x/"}
    consumer.base_send = server
    return consumer


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_send_returns_at_once_while_the_client_does_not_read_and_order_is_kept():
    server = StuckServer(open=False)
    consumer = socket_with(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(100):
        await asyncio.wait_for(consumer.send(text_data=f"frame {i}"), 0.05)
    assert loop.time() - started < 0.5
    await settle()
    assert server.texts() == []  # the client reads nothing: everything waits in the outbox
    assert consumer.outbox_bytes == sum(len(f"frame {i}") for i in range(1, 100))  # frame 0 is in flight
    server.open.set()
    await settle()
    assert server.texts() == [f"frame {i}" for i in range(100)]
    assert consumer.outbox_bytes == 0 and consumer.writer is None


async def test_more_than_the_limit_waiting_drops_the_outbox_and_closes_4008(settings, caplog):
    settings.WEBSOCKET_MAX_QUEUED_BYTES = 10_000
    server = StuckServer(open=False)
    consumer = socket_with(server)
    frame = "x" * 1000
    for _ in range(12):
        await consumer.send(text_data=frame)
    await settle()
    assert consumer.outbox_closed and consumer.outbox_bytes == 0 and len(consumer.outbox) == 0
    # The close is not stuck behind the send that waits for the client.
    assert server.closes() == [protocol.TOO_SLOW]
    assert "does not read (limit 10000); closing it" in caplog.text
    # Nothing more is kept for it, whatever is handed over later.
    for _ in range(50):
        await consumer.send(text_data=frame)
    assert consumer.outbox_bytes == 0
    server.open.set()
    await settle()
    assert server.texts() == []  # the send that waited was abandoned with the rest


async def test_the_limit_counts_what_waits_not_what_was_sent(settings):
    settings.WEBSOCKET_MAX_QUEUED_BYTES = 10_000
    server = StuckServer()
    consumer = socket_with(server)
    for _ in range(100):  # 100 kB in all, but a reading client takes each frame as it comes
        await consumer.send(text_data="y" * 1000)
        await settle()
    assert len(server.texts()) == 100 and server.closes() == []


async def test_a_zero_limit_keeps_everything(settings):
    settings.WEBSOCKET_MAX_QUEUED_BYTES = 0
    server = StuckServer(open=False)
    consumer = socket_with(server)
    for _ in range(200):
        await consumer.send(text_data="z" * 1000)
    await settle()
    assert consumer.outbox_bytes == 199_000 and not consumer.outbox_closed


async def test_close_goes_after_the_frames_handed_over():
    server = StuckServer()
    consumer = socket_with(server)
    await consumer.send(text_data="last words")
    await consumer.close(protocol.FORBIDDEN)
    assert [m["type"] for m in server.sent] == ["websocket.send", "websocket.close"]
    assert server.closes() == [protocol.FORBIDDEN]


async def test_close_waits_for_a_stuck_client_at_most_the_flush_time(monkeypatch):
    monkeypatch.setattr(consumers, "CLOSE_FLUSH_SECONDS", 0.2)
    server = StuckServer(open=False)
    consumer = socket_with(server)
    await consumer.send(text_data="never taken")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await consumer.close(protocol.NOT_LOGGED_IN)
    assert 0.15 < loop.time() - started < 1.0
    assert server.closes() == [protocol.NOT_LOGGED_IN]


async def test_a_second_close_sends_nothing():
    server = StuckServer()
    consumer = socket_with(server)
    await consumer.close(protocol.FORBIDDEN)
    await consumer.close(protocol.SERVER_ERROR)
    await consumer.send(text_data="after the close")
    await settle()
    assert server.closes() == [protocol.FORBIDDEN] and server.texts() == []


async def test_a_send_that_fails_drops_that_sockets_frames_and_raises_nothing():
    server = StuckServer(fail=True)
    consumer = socket_with(server)
    await consumer.send(text_data="one")
    await consumer.send(text_data="two")
    await settle()
    assert consumer.outbox_closed and consumer.writer is None and consumer.outbox_bytes == 0
    await consumer.send(text_data="three")
    assert len(consumer.outbox) == 0


async def test_a_close_the_server_refuses_is_not_an_error():
    class Gone(StuckServer):
        async def __call__(self, message):
            raise RuntimeError("Unexpected ASGI message 'websocket.close', after sending 'websocket.close'")

    consumer = socket_with(Gone())
    await consumer.close(protocol.SERVER_ERROR)  # logged at debug, not raised


@pytest.mark.parametrize("stuck", [1, 5])
async def test_the_hub_forwards_to_every_other_socket_while_some_are_stuck(stuck):
    from conferences import broadcast
    from conferences.fanout import RoomHub

    class Layer:
        def __init__(self):
            self.queue = asyncio.Queue()

        async def new_channel(self):
            return "hub!1"

        async def group_add(self, group, channel):
            pass

        async def receive(self, channel):
            return await self.queue.get()

    class Page(FanOutConsumer):
        async def room_event(self, message):
            await self.send(text_data=message["text"])

    layer = Layer()
    hub = RoomHub(layer, asyncio.get_running_loop())
    servers = [StuckServer(open=i >= stuck) for i in range(10)]
    pages = [Page() for _ in servers]
    for page, server in zip(pages, servers, strict=True):
        page.scope, page.base_send, page.channel_name = {"path": "/ws/conferences/x/"}, server, "c"
        await hub.join(7, page)
    for seq in range(1, 21):
        await layer.queue.put(broadcast.room_message({"type": "conference.updated", "seq": seq}, 7))
    await asyncio.sleep(0.05)
    expected = [f'{{"type":"conference.updated","seq":{seq}}}' for seq in range(1, 21)]
    assert all(server.texts() == expected for server in servers[stuck:])
    assert all(server.texts() == [] for server in servers[:stuck])
    hub.task.cancel()
    hub.refresher.cancel()


async def test_a_client_that_reads_costs_no_task_per_frame():
    server = StuckServer()
    consumer = socket_with(server)
    before = len(asyncio.all_tasks())
    for i in range(50):
        await consumer.send(text_data=f"f{i}")
        assert consumer.writer is None  # sent within the call: no task, no loop turn
    assert len(asyncio.all_tasks()) == before
    assert server.texts() == [f"f{i}" for i in range(50)]


async def test_a_send_that_waits_is_carried_on_through_yields_and_failures():
    from conferences.consumers import start_eagerly

    loop = asyncio.get_running_loop()
    order = []

    async def steps():
        order.append("start")
        await asyncio.sleep(0)  # a bare yield
        order.append("after yield")
        future = loop.create_future()
        loop.call_later(0.01, future.set_exception, OSError("reset"))
        try:
            await future
        except OSError as exc:
            order.append(f"saw {exc}")
        await asyncio.sleep(0.01)
        return "done"

    task = start_eagerly(steps())
    assert order == ["start"] and task is not None
    assert await task == "done"
    assert order == ["start", "after yield", "saw reset"]

    blocked = loop.create_future()

    async def waits_forever():
        try:
            await blocked
        except asyncio.CancelledError:
            order.append("cancelled inside")
            raise

    task = start_eagerly(waits_forever())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert order[-1] == "cancelled inside"
