"""The real services the product stands on: the sandbox Asterisk's ARI and Redis."""

import asyncio
import base64
import json
import uuid

import pytest
import requests
import websockets
from django.utils.module_loading import import_string

from conferencesite.env import channel_layers_for

pytestmark = pytest.mark.integration


def test_sandbox_asterisk_answers_ari_info(ari):
    response = requests.get(f"{ari.url}/asterisk/info", auth=ari.auth, timeout=5)
    assert response.status_code == 200
    info = response.json()
    assert info["system"]["version"].split(".")[0].isdigit()
    assert "entity_id" in info["system"]


def test_sandbox_ari_refuses_wrong_credentials(ari):
    response = requests.get(f"{ari.url}/asterisk/info", auth=(ari.username, "wrong"), timeout=5)
    assert response.status_code == 401


def ws_auth(ari):
    token = base64.b64encode(f"{ari.username}:{ari.password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def next_event(socket, kind, timeout=10):
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await socket.recv())
            if event["type"] == kind:
                return event


@pytest.mark.parametrize("context,role", [("conferences", "participant"), ("conferences-admin", "admin")])
async def test_sandbox_dialplan_sends_callers_into_stasis(ari, context, role):
    """deploy/asterisk/extensions.conf is what runs: Stasis(conference,<room>), the role in CONFERENCE_ROLE."""
    ws_url = ari.url.replace("http", "ws", 1) + "/events?app=conference&subscribeAll=false"
    suffix = uuid.uuid4().hex
    async with websockets.connect(ws_url, additional_headers=ws_auth(ari)) as socket:
        await asyncio.to_thread(
            requests.post,
            f"{ari.url}/channels",
            params={
                "endpoint": f"Local/100@{context}",
                "context": "test-farend",
                "extension": "silent",
                "channelId": f"f{suffix}",
                "otherChannelId": f"p{suffix}",
                "callerId": '"Integration" <555>',
            },
            auth=ari.auth,
            timeout=5,
        )
        try:
            start = await next_event(socket, "StasisStart")
            assert start["args"] == ["100"]
            assert start["channel"]["channelvars"] == {"CONFERENCE_ROLE": role}  # ari.conf's channelvars
            assert start["channel"]["id"] == f"p{suffix}"
            assert start["channel"]["caller"] == {"name": "Integration", "number": "555"}
        finally:
            await asyncio.to_thread(requests.delete, f"{ari.url}/channels/f{suffix}", auth=ari.auth, timeout=5)


async def test_ari_events_socket_takes_credentials_in_a_header(ari):
    ws_url = ari.url.replace("http", "ws", 1) + "/events?app=foundation-test&subscribeAll=false"
    async with websockets.connect(ws_url, additional_headers=ws_auth(ari)) as socket:
        pong = await socket.ping()
        await asyncio.wait_for(pong, 5)
        apps = await asyncio.to_thread(requests.get, f"{ari.url}/applications", auth=ari.auth, timeout=5)
        assert "foundation-test" in [app["name"] for app in apps.json()]


def make_layer(redis_url):
    config = channel_layers_for(redis_url)["default"]
    return import_string(config["BACKEND"])(**config["CONFIG"])


async def test_message_round_trips_through_redis_between_two_layers(redis_url):
    # Two layer instances stand for two processes (worker and web) sharing Redis.
    web, worker = make_layer(redis_url), make_layer(redis_url)
    try:
        channel = await web.new_channel()
        await web.group_add("conference.test-roundtrip", channel)
        await worker.group_send("conference.test-roundtrip", {"type": "room.event", "seq": 7, "text": "héllo"})
        message = await asyncio.wait_for(web.receive(channel), 5)
        assert message == {"type": "room.event", "seq": 7, "text": "héllo"}
        await web.group_discard("conference.test-roundtrip", channel)
    finally:
        await web.flush()
        await web.close_pools()
        await worker.close_pools()


async def test_idle_receive_outlives_a_five_second_socket_timeout(redis_url):
    """A consumer idles longer than redis-py 8's 5 s default socket timeout (channels_redis#422)."""
    web, worker = make_layer(redis_url), make_layer(redis_url)
    try:
        channel = await web.new_channel()
        receive = asyncio.create_task(web.receive(channel))
        await asyncio.sleep(7)
        assert not receive.done(), receive.exception() if receive.done() else None
        await worker.send(channel, {"type": "late.message"})
        assert (await asyncio.wait_for(receive, 5))["type"] == "late.message"
    finally:
        await web.flush()
        await web.close_pools()
        await worker.close_pools()
