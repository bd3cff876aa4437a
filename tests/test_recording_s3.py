"""Recordings in an S3-compatible store (django-storages' S3Storage), against a real S3 API on loopback.

The store is moto's S3 server in its own process (``moto_server``: the S3
REST API over HTTP; MinIO itself cannot be installed from this project's
package registries). The site is configured the way an operator does it,
through ``S3_*`` (conferencesite/env.py, ``storages_for``). The worker
fetches a recording from the sandbox Asterisk into the bucket; downloads
ask the bucket for the bytes of the range only; purging deletes the
object; a store that is down gets a clear 503, never a traceback.
"""

import asyncio
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import requests
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import AsyncClient, Client
from django.utils import timezone

from conferences import services
from conferences.models import Conference, ConferenceAccess, Recording
from conferencesite import env
from tests.live import act, db, wait_roster
from tests.test_recording import measure, stored

pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "conference-recordings"
KEYS = {"aws_access_key_id": "site", "aws_secret_access_key": "site-secret", "region_name": "eu-west-1"}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server as a separate process on a free loopback port; its URL."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"moto_server did not start on {url}") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def bucket(s3_server, settings):
    """A fresh bucket, and the site's default storage in it (as ``S3_*`` in the environment would set)."""
    s3 = boto3.resource("s3", endpoint_url=s3_server, **KEYS)
    store = s3.Bucket(BUCKET)
    if store.creation_date is not None:
        store.objects.all().delete()
    else:
        store.create(CreateBucketConfiguration={"LocationConstraint": KEYS["region_name"]})
    settings.STORAGES = env.storages_for(
        {
            "S3_BUCKET": BUCKET,
            "S3_ENDPOINT_URL": s3_server,
            "S3_REGION": KEYS["region_name"],
            "S3_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
            "S3_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"],
            "S3_PREFIX": "site/media",
            "S3_ADDRESSING_STYLE": "path",
        }
    )
    return store


def keys(store):
    return sorted(item.key for item in store.objects.all())


@pytest.mark.integration
async def test_a_recording_is_fetched_into_the_bucket_downloaded_by_range_and_purged(
    runner, sandbox, make_room, bucket
):
    moderator = await db(User.objects.create_user)(username="mod", password="x")
    room = await make_room(195)
    await db(ConferenceAccess.objects.create)(conference=room, user=moderator, role="moderator")
    worker = await runner.start()
    talker = await sandbox.caller(195, far="talk", name="Talker", number="641")
    await wait_roster(sandbox, worker, room, {talker.channel_id})
    assert await act(worker, room, "record_start", None, moderator) == (True, None)
    await asyncio.sleep(3)
    assert await act(worker, room, "record_stop", None, moderator) == (True, None)
    [recording] = await stored(room)
    assert type(default_storage._wrapped).__name__ == "S3Storage"
    key = f"site/media/{recording.file.name}"
    assert await asyncio.to_thread(keys, bucket) == [key]
    body = await asyncio.to_thread(lambda: bucket.Object(key).get()["Body"].read())
    assert len(body) == recording.size and body[:4] == b"RIFF"
    seconds, level = await db(measure)(recording.file.name)
    assert 2.0 <= seconds <= 5.0 and level > 100
    await sandbox.call("GET", f"/recordings/stored/{recording.name}", ok=(404,))  # Asterisk's copy went

    link = f"/conferences/{room.slug}/recordings/{recording.pk}/"
    client = AsyncClient()  # the ASGI path (the product's): chunks read off the event loop
    await client.aforce_login(moderator)
    response = await client.get(link, headers={"range": "bytes=0-43"})
    assert response.status_code == 206 and response["Content-Range"] == f"bytes 0-43/{len(body)}"
    assert b"".join([chunk async for chunk in response.streaming_content]) == body[:44]
    response = await client.get(link, headers={"range": "bytes=1000-"})  # a player seeking
    assert response.status_code == 206 and int(response["Content-Length"]) == len(body) - 1000
    assert b"".join([chunk async for chunk in response.streaming_content]) == body[1000:]
    response = await client.get(link, headers={"range": "bytes=-10"})
    assert b"".join([chunk async for chunk in response.streaming_content]) == body[-10:]

    # Only the range's bytes are asked of the store (S3Storage's own open would fetch the whole file).
    from conferences.recordings import open_range

    reader = await asyncio.to_thread(open_range, default_storage._wrapped, recording.file.name, 40, 4)
    assert type(reader).__name__ == "StreamingBody" and await asyncio.to_thread(reader.read) == body[40:44]

    def whole():
        sync = Client()
        sync.force_login(moderator)
        response = sync.get(link)
        return response.status_code, b"".join(response.streaming_content)

    assert await db(whole)() == (200, body)

    # Retention: the object is deleted from the bucket, the row says so.
    await db(Recording.objects.filter(pk=recording.pk).update)(stopped_at=timezone.now() - timedelta(days=91))
    assert await db(services.purge_recordings)() == 1
    assert await asyncio.to_thread(keys, bucket) == []
    assert (await db(Recording.objects.get)(pk=recording.pk)).state == Recording.State.PURGED


def test_a_store_that_is_down_gets_a_clear_answer(bucket, settings):
    """The bucket's endpoint stops answering: the download says so (503, no traceback), and a purge keeps
    the row stored for the next one."""
    moderator = User.objects.create_user(username="mod", password="x")
    from conferences.models import AsteriskServer

    server = AsteriskServer.objects.create(name="pbx", ari_url="http://127.0.0.1:1/ari", username="u", password="p")
    room = Conference.objects.create(server=server, name="Room", number="196", slug="room-196")
    ConferenceAccess.objects.create(conference=room, user=moderator, role="moderator")
    recording = Recording.objects.create(
        conference=room,
        name=f"conference-{room.pk}-20261201-000000-abcdef",
        started_at=timezone.now() - timedelta(days=100),
        stopped_at=timezone.now() - timedelta(days=99),
        state=Recording.State.STORED,
        file=default_storage.save("recordings/down.wav", ContentFile(b"RIFF")),
    )
    options = settings.STORAGES["default"]["OPTIONS"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            **settings.STORAGES["default"],
            "OPTIONS": {**options, "endpoint_url": f"http://127.0.0.1:{free_port()}"},
        },
    }
    client = Client()
    client.force_login(moderator)
    response = client.get(f"/conferences/{room.slug}/recordings/{recording.pk}/")
    assert response.status_code == 503
    assert response.content.decode() == "The recordings' storage did not answer; try again later."
    assert services.purge_recordings() == 0
    assert Recording.objects.get(pk=recording.pk).state == Recording.State.STORED
