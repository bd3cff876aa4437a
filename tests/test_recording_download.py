"""Downloads of stored recordings: the access check on every request, range requests, the history page's
links, and ``recording.finished`` with its download_url null for a socket whose user may not download.
"""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from conferences import services
from conferences.models import Conference, ConferenceAccess, Meeting, Recording
from tests.sockets import frame

pytestmark = pytest.mark.django_db(transaction=True)

BODY = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    channel_layers.backends.clear()
    yield tmp_path
    channel_layers.backends.clear()


@pytest.fixture
def stored(room):
    meeting = Meeting.objects.create(conference=room, started_at=timezone.now())
    name = default_storage.save("recordings/2026/12/conference-1-x.wav", ContentFile(BODY))
    return Recording.objects.create(
        conference=room,
        meeting=meeting,
        name="conference-1-20261201-000000-abcdef",
        started_at=timezone.now(),
        state=Recording.State.STORED,
        file=name,
        size=len(BODY),
        duration=12.0,
    )


def url(recording):
    return f"/conferences/{recording.conference.slug}/recordings/{recording.pk}/"


def body(response):
    return b"".join(response.streaming_content)


def test_a_moderator_downloads_the_whole_file_and_any_range_of_it(client, moderator, stored):
    client.force_login(moderator)
    whole = client.get(url(stored))
    assert whole.status_code == 200 and body(whole) == BODY
    assert whole["Content-Length"] == str(len(BODY)) and whole["Accept-Ranges"] == "bytes"
    assert whole["Content-Type"] == "audio/wav" and "no-store" in whole["Cache-Control"]
    part = client.get(url(stored), HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and body(part) == BODY[100:200]
    assert part["Content-Range"] == f"bytes 100-199/{len(BODY)}"
    assert body(client.get(url(stored), HTTP_RANGE="bytes=-10")) == BODY[-10:]
    assert body(client.get(url(stored), HTTP_RANGE="bytes=10000-")) == BODY[10000:]
    assert body(client.get(url(stored), HTTP_RANGE="bytes=10000-99999999")) == BODY[10000:]
    beyond = client.get(url(stored), HTTP_RANGE="bytes=99999-")
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(BODY)}"
    for ignored in ("bytes=5-1", "bytes=0-1,5-6", "items=0-1", "bytes=--1", "bytes=" + "9" * 30):
        response = client.get(url(stored), HTTP_RANGE=ignored)
        assert response.status_code in (200, 416), ignored
        if response.status_code == 200:
            assert body(response) == BODY


async def test_the_download_streams_under_asgi(async_client, moderator, stored):
    await async_client.aforce_login(moderator)
    response = await async_client.get(url(stored), headers={"Range": "bytes=0-1023"})
    assert response.status_code == 206 and response.is_async
    assert b"".join([chunk async for chunk in response.streaming_content]) == BODY[:1024]


def test_who_may_download(client, viewer, make_user, stored):
    client.force_login(viewer)
    assert client.get(url(stored)).status_code == 403  # the room's recordings are for moderators
    Conference.objects.filter(pk=stored.conference_id).update(record_download="viewers")
    assert body(client.get(url(stored))) == BODY
    client.force_login(make_user("stranger"))
    assert client.get(url(stored)).status_code == 403
    client.logout()
    assert client.get(url(stored)).status_code in (302, 403)


def test_only_a_stored_recording_of_that_room_is_served(client, moderator, stored, make_conference, grant):
    client.force_login(moderator)
    other = make_conference("200", slug="other", name="Other")
    grant(other, user=moderator, role=ConferenceAccess.Role.MODERATOR)
    assert client.get(f"/conferences/other/recordings/{stored.pk}/").status_code == 404
    Recording.objects.filter(pk=stored.pk).update(state=Recording.State.FINISHED)
    assert client.get(url(stored)).status_code == 404
    assert client.get("/conferences/sales/recordings/99999999/").status_code == 404


def test_the_history_page_plays_a_meetings_recordings_for_who_may_download(client, moderator, viewer, stored):
    client.force_login(moderator)
    page = client.get(f"/conferences/{stored.conference.slug}/history/").content.decode()
    assert f'src="{url(stored)}"' in page and stored.file.name not in page  # no storage path on the page
    client.force_login(viewer)
    page = client.get(f"/conferences/{stored.conference.slug}/history/").content.decode()
    assert url(stored) not in page and "(moderators only)" in page


async def test_recording_finished_reaches_moderators_with_its_link_and_viewers_without(moderator, viewer, room, stored):
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from conferencesite.asgi import application

    async def socket(user):
        client = Client()  # a session of its own: a second login on one client would end the first
        await sync_to_async(client.force_login)(user)
        headers = [
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
        ]
        communicator = WebsocketCommunicator(application, "/ws/conferences/sales/", headers=headers)
        assert (await communicator.connect())[0]
        return communicator

    await sync_to_async(Recording.objects.filter(pk=stored.pk).update)(state=Recording.State.FINISHED)
    mod_socket, view_socket = await socket(moderator), await socket(viewer)
    await frame(mod_socket)
    await frame(view_socket)
    await sync_to_async(services.recording_stored)(recording_id=stored.pk, file_name=stored.file.name, size=10)
    for socket, expected in ((mod_socket, url(stored)), (view_socket, None)):
        finished = await frame(socket)
        assert finished["type"] == "recording.finished"
        assert finished["recording"]["id"] == stored.pk and finished["recording"]["download_url"] == expected
        assert "moderators_only" not in finished
    for communicator in (mod_socket, view_socket):
        await communicator.disconnect()


def test_retention_deletes_exactly_the_expired_files_and_says_so(room, media):
    from datetime import timedelta

    from django.core.management import call_command

    from conferences.models import ConferenceEvent

    Conference.objects.filter(pk=room.pk).update(record_retention_days=30)
    now = timezone.now()

    def make(name, state, stopped_days_ago):
        file_name = default_storage.save(f"recordings/{name}.wav", ContentFile(b"x"))
        stopped = now - timedelta(days=stopped_days_ago) if stopped_days_ago is not None else None
        return Recording.objects.create(
            conference=room,
            name=f"conference-{room.pk}-{name}",
            started_at=(stopped or now) - timedelta(minutes=5),
            stopped_at=stopped,
            state=state,
            file=file_name,
        )

    old = make("old", Recording.State.STORED, 31)
    young = make("young", Recording.State.STORED, 29)
    live = make("live", Recording.State.RECORDING, None)
    fetching = make("fetching", Recording.State.FINISHED, 40)  # not yet in storage: never purged
    call_command("purge_recordings", stdout=open("/dev/null", "w"))  # noqa: SIM115
    states = {r.name.rsplit("-", 1)[-1]: (r.state, bool(r.file)) for r in Recording.objects.all()}
    assert states == {
        "old": ("purged", False),
        "young": ("stored", True),
        "live": ("recording", True),
        "fetching": ("finished", True),
    }
    assert not default_storage.exists(old.file.name) and default_storage.exists(young.file.name)
    assert default_storage.exists(live.file.name) and default_storage.exists(fetching.file.name)
    [entry] = ConferenceEvent.objects.filter(kind="recording_purged")
    assert entry.details == {"recording": old.pk, "retention_days": 30}
    assert services.purge_recordings() == 0  # nothing twice


def test_a_file_the_store_cannot_delete_stays_stored_and_the_others_are_purged(room, media, monkeypatch):
    from datetime import timedelta

    stopped = timezone.now() - timedelta(days=room.record_retention_days + 1)
    rows = [
        Recording.objects.create(
            conference=room,
            name=f"conference-{room.pk}-{name}",
            started_at=stopped - timedelta(minutes=5),
            stopped_at=stopped,
            state=Recording.State.STORED,
            file=default_storage.save(f"recordings/{name}.wav", ContentFile(b"x")),
        )
        for name in ("first", "stuck", "last")
    ]
    from django.core.files.storage import storages

    storage = storages["default"]  # the object behind default_storage (a lazy proxy)
    delete = storage.delete

    def flaky(name):
        if "stuck" in name:
            raise ConnectionError("the store did not answer")
        delete(name)

    monkeypatch.setattr(storage, "delete", flaky)
    assert services.purge_recordings() == 2
    assert [Recording.objects.get(pk=r.pk).state for r in rows] == ["purged", "stored", "purged"]
    monkeypatch.setattr(storage, "delete", delete)
    assert services.purge_recordings() == 1  # the next purge gets it
