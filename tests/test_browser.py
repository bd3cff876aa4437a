"""End to end in real headless Chromium: daphne + ARI worker + the sandbox Asterisk + Redis.

A moderator and a viewer watch one room in two browser contexts while real
(Local channel) callers come and go; the web server and the worker are
restarted under them.
"""

import asyncio

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User

from conferences.models import AsteriskServer, Conference, ConferenceAccess, Sound
from tests.live import db, present_channels
from tests.sandbox import Ears, eventually
from tests.sockets import refused
from tests.stack import ROOT, Processes, base_env, database_url

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Screenshots land in var/ (ignored); docs/screenshots holds the ones chosen for the README.
SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture
async def stack(pbx, sandbox, redis_url):
    # daphne and the worker as separate processes sharing Redis, as in production.
    services = Processes(base_env(database_url(), redis_url), pbx.name, ROOT / "var" / "e2e")
    services.start_web()
    services.start_worker()
    await services.web_up()
    await eventually(
        lambda: db(lambda: AsteriskServer.objects.get(pk=pbx.pk).connected)(), timeout=30, message="worker up"
    )
    yield services
    await asyncio.to_thread(services.close)


@pytest.fixture
async def stack_ears(sandbox):
    """The test's own ARI application (tests/sandbox.py, Ears): holds the far ends of callers who type keys."""
    async with Ears(sandbox) as ears:
        yield ears


async def logged_in_page(browser, base, username, password="pw-Tr0ub4dor"):
    context = await browser.new_context(locale="en-US", viewport={"width": 1100, "height": 800})
    page = await context.new_page()
    await page.goto(f"{base}/accounts/login/")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    await page.click("main button[type=submit]")
    await page.wait_for_url(f"{base}/")
    return page


def moderator_and_viewer(room):
    """Users "mod" (moderator) and "view" (viewer) of ``room``, password pw-Tr0ub4dor."""
    # The web process knows the production hashers only (tests use MD5 for speed).
    password = PBKDF2PasswordHasher().encode("pw-Tr0ub4dor", "e2e-salt-123456", iterations=100_000)
    moderator = User.objects.create(username="mod", password=password)
    viewer = User.objects.create(username="view", password=password)
    ConferenceAccess.objects.create(conference=room, user=moderator, role="moderator")
    ConferenceAccess.objects.create(conference=room, user=viewer, role="viewer")


def row(page, participant_id):
    return page.locator(f"[data-participant-id='{participant_id}']")


async def participant_id(channel_id):
    from conferences.models import Participant

    return await db(lambda: Participant.objects.get(channel_id=channel_id).pk)()


async def live(page):
    await page.wait_for_function(
        "() => document.querySelector('[data-role=socket-status]')?.dataset.state === 'live'", timeout=20000
    )


async def test_moderator_and_viewer_watch_a_real_room(stack, browser, pbx, sandbox, stack_ears):
    room = await db(Conference.objects.create)(server=pbx, number="150", slug="daily", name="Daily stand-up")

    await db(moderator_and_viewer)(room)
    base = f"http://127.0.0.1:{stack.port}"
    moderator = await logged_in_page(browser, base, "mod")
    viewer = await logged_in_page(browser, base, "view")
    for page in (moderator, viewer):
        await page.goto(f"{base}/conferences/daily/")
        await live(page)
    # The viewer also keeps the room list open in a second tab: its count is live.
    rooms = await viewer.context.new_page()
    await rooms.goto(f"{base}/")
    await rooms.wait_for_selector("table.rooms[data-live=true]", timeout=10000)
    count_in_list = rooms.locator("tr[data-slug=daily] [data-role=count]")
    assert await count_in_list.inner_text() == "0"

    # A real caller joins and appears on both pages; the talking indicator lights.
    talker = await sandbox.caller(150, far="talk", name="Alice <script>x</script>", number="201")
    await eventually(lambda: db(lambda: talker.channel_id in present_channels(room))(), timeout=15)
    talker_id = await participant_id(talker.channel_id)
    for page in (moderator, viewer):
        await row(page, talker_id).wait_for(timeout=10000)
        assert "Alice <script>x</script>" in await row(page, talker_id).inner_text()
    await viewer.wait_for_selector(f"[data-participant-id='{talker_id}'][data-talking='true']", timeout=15000)

    quiet = await sandbox.typist(stack_ears, 150, name="Bob", number="202")  # a phone that types on demand
    await eventually(lambda: db(lambda: quiet.channel_id in present_channels(room))(), timeout=15)
    quiet_id = await participant_id(quiet.channel_id)
    await row(viewer, quiet_id).wait_for(timeout=10000)
    assert await viewer.locator("[data-role=count]").inner_text() == "2"
    await rooms.wait_for_function(
        "() => document.querySelector('tr[data-slug=daily] [data-role=count]').textContent === '2'", timeout=10000
    )
    # The list is an overview: who is in each room, who talks (the hostile name as text).
    who = rooms.locator("tr[data-slug=daily] [data-role=who]")
    await who.locator(f"[data-participant-id='{talker_id}'][data-talking='true']").wait_for(timeout=15000)
    assert "Alice <script>x</script>" in await who.inner_text() and "Bob" in await who.inner_text()

    # The viewer has no controls at all.
    assert await viewer.locator("[data-action]").count() == 0

    # The moderator mutes the talker: the viewer sees the badge.
    await row(moderator, talker_id).locator("[data-action=mute]").click()
    await row(viewer, talker_id).locator("[data-badge=muted]").wait_for(timeout=10000)
    assert await row(viewer, talker_id).locator("[data-badge=muted]").inner_text() == "muted by a moderator"

    # Bob raises his hand from his keypad (*1): both pages show it; the moderator lowers it.
    await quiet.press("*1")
    for page in (moderator, viewer):
        await row(page, quiet_id).locator("[data-badge=hand]").wait_for(timeout=10000)
    assert await row(viewer, quiet_id).locator("[data-badge=hand]").inner_text() == "hand raised · 1"
    await row(moderator, quiet_id).locator("[data-action=lower_hand]").click()
    for page in (moderator, viewer):
        await row(page, quiet_id).locator("[data-badge=hand]").wait_for(state="detached", timeout=10000)
    assert await row(moderator, quiet_id).locator("[data-action=lower_hand]").is_hidden()
    # And mutes himself (*6): a mute of his own, which the page tells apart; the list shows it too.
    await quiet.press("*6")
    await row(viewer, quiet_id).locator("[data-badge=muted]").wait_for(timeout=10000)
    assert await row(viewer, quiet_id).locator("[data-badge=muted]").inner_text() == "muted (by themself)"
    await who.locator(f"[data-participant-id='{quiet_id}'] .badge-muted").wait_for(timeout=10000)

    # Kick asks for confirmation, then the row goes everywhere.
    moderator.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row(moderator, quiet_id).locator("[data-action=kick]").click()
    confirm = moderator.locator("dialog[open] [data-confirm]")
    if await confirm.count():
        await confirm.click()
    for page in (moderator, viewer):
        await row(page, quiet_id).wait_for(state="detached", timeout=10000)

    # A forged action from the viewer's page is refused by the server.
    reply = await viewer.evaluate(
        """(target) => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/ws/conferences/daily/`);
            ws.onmessage = (event) => {
                const frame = JSON.parse(event.data);
                if (frame.type === "snapshot") {
                    ws.send(JSON.stringify({action: "kick", request_id: "forged", participant: target}));
                } else if (frame.type === "reply") { resolve(frame); ws.close(); }
            };
        })""",
        talker_id,
    )
    assert reply == refused("forged", "you may not moderate this room")
    assert await sandbox.channel_exists(talker.channel_id)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await moderator.screenshot(path=str(SCREENSHOTS / "room-moderator.png"), full_page=True)

    # The web server restarts: pages reconnect and resync; a caller who came meanwhile is there.
    await asyncio.to_thread(stack.stop_web)
    late = await sandbox.caller(150, name="Carol", number="203")
    await eventually(lambda: db(lambda: late.channel_id in present_channels(room))(), timeout=15)
    stack.start_web()
    await stack.web_up()
    late_id = await participant_id(late.channel_id)
    for page in (moderator, viewer):
        await row(page, late_id).wait_for(timeout=40000)
        await live(page)

    # The worker restarts: the roster stays right (one row per caller, nobody lost).
    await asyncio.to_thread(stack.stop_worker)
    await sandbox.hangup(talker)
    stack.start_worker()
    await eventually(lambda: db(lambda: talker.channel_id not in present_channels(room))(), timeout=30)
    for page in (moderator, viewer):
        await row(page, talker_id).wait_for(state="detached", timeout=20000)
        ids = await page.eval_on_selector_all("[data-participant-id]", "rows => rows.map(r => r.dataset.participantId)")
        assert sorted(ids) == [str(late_id)]


async def test_a_moderator_runs_the_lobby_while_a_viewer_watches(stack, browser, pbx, sandbox):
    """Callers wait in the lobby: both pages list them (only the moderator has buttons), the room list counts
    them; the moderator admits one (it moves to the roster on both pages) and turns another away."""
    room = await db(Conference.objects.create)(server=pbx, number="160", slug="lobby", name="With a lobby", lobby=True)

    await db(moderator_and_viewer)(room)
    base = f"http://127.0.0.1:{stack.port}"
    moderator = await logged_in_page(browser, base, "mod")
    viewer = await logged_in_page(browser, base, "view")
    for page in (moderator, viewer):
        await page.goto(f"{base}/conferences/lobby/")
        await live(page)
    rooms = await viewer.context.new_page()
    await rooms.goto(f"{base}/")
    await rooms.wait_for_selector("table.rooms[data-live=true]", timeout=10000)

    guest = await sandbox.caller(160, name="Guest <img src=x>", number="401")
    other = await sandbox.caller(160, name="Other", number="402")

    def waiting_ids():
        from conferences.models import Participant

        # By number, not id: the two callers enter the application at the same time, in either order.
        return list(
            Participant.objects.waiting().filter(conference=room).order_by("caller_number").values_list("pk", flat=True)
        )

    guest_id, other_id = await eventually(lambda: db(lambda: len(waiting_ids()) == 2 and waiting_ids())(), timeout=15)
    in_lobby = "[data-role=lobby] [data-participant-id='{}']"
    in_roster = "[data-role=roster-body] [data-participant-id='{}']"
    for page in (moderator, viewer):
        await page.locator(in_lobby.format(guest_id)).wait_for(timeout=10000)
        await page.locator(in_lobby.format(other_id)).wait_for(timeout=10000)
        assert "Guest <img src=x>" in await page.locator(in_lobby.format(guest_id)).inner_text()
        assert await page.locator("[data-role=waiting-count]").inner_text() == "2 waiting"
    assert await viewer.locator("[data-action]").count() == 0
    status = rooms.locator("tr[data-slug=lobby] [data-role=status]")
    await rooms.wait_for_function(
        "() => document.querySelector('tr[data-slug=lobby] [data-role=status]').textContent.includes('2 waiting')",
        timeout=10000,
    )
    assert "lobby" in await status.inner_text()

    # Admit: the guest moves from the lobby to the roster, on both pages; the room list counts one waiting.
    await moderator.locator(in_lobby.format(guest_id)).locator("[data-action=admit]").click()
    for page in (moderator, viewer):
        await page.locator(in_roster.format(guest_id)).wait_for(timeout=15000)
        await page.locator(in_lobby.format(guest_id)).wait_for(state="detached", timeout=10000)
    assert await viewer.locator("[data-role=count]").inner_text() == "1"
    await rooms.wait_for_function(
        "() => document.querySelector('tr[data-slug=lobby] [data-role=status]').textContent.includes('1 waiting')",
        timeout=10000,
    )
    await eventually(lambda: db(lambda: guest.channel_id in present_channels(room))(), timeout=10)

    # Deny asks first; the other caller leaves the lobby everywhere and is hung up.
    await moderator.locator(in_lobby.format(other_id)).locator("[data-action=deny]").click()
    await moderator.locator("dialog[open] [data-confirm]").click()
    for page in (moderator, viewer):
        await page.locator(in_lobby.format(other_id)).wait_for(state="detached", timeout=10000)
        await page.locator("[data-role=waiting-count]").wait_for(state="hidden", timeout=10000)

    async def other_gone():
        return not await sandbox.channel_exists(other.channel_id)

    await eventually(other_gone, timeout=20, message="the denied caller is hung up")
    # The viewer's timeline tells the story in words.
    timeline = await viewer.locator("[data-role=timeline]").inner_text()
    assert "was admitted" in timeline and "was turned away" in timeline, timeline

    # The lobby switched off from the page: the next caller comes straight in.
    await moderator.locator("[data-action=lobby_off]").click()
    await rooms.wait_for_function(
        "() => !document.querySelector('tr[data-slug=lobby] [data-role=status]').textContent.includes('lobby')",
        timeout=10000,
    )
    late = await sandbox.caller(160, name="Late", number="403")
    await eventually(lambda: db(lambda: late.channel_id in present_channels(room))(), timeout=15)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await moderator.screenshot(path=str(SCREENSHOTS / "room-lobby-moderator.png"), full_page=True)


async def test_a_moderator_invites_numbers_and_watches_them_ring_while_a_viewer_sees_the_outcome(
    stack, browser, pbx, sandbox
):
    """From the page: a number that rings is cancelled, a busy one says so, one that answers joins the
    room; a number with letters is refused on the page, one outside the server's pattern by the server."""
    await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(
        dial_template="Local/{number}@test-invitees", invite_pattern="7[0-9]{3}"
    )
    room = await db(Conference.objects.create)(server=pbx, number="165", slug="invites", name="Invites")
    await db(Sound.objects.create)(server=pbx, name="welcome", label="Welcome", sound="conf-placeintoconf")
    await db(moderator_and_viewer)(room)
    base = f"http://127.0.0.1:{stack.port}"
    moderator = await logged_in_page(browser, base, "mod")
    viewer = await logged_in_page(browser, base, "view")
    for page in (moderator, viewer):
        await page.goto(f"{base}/conferences/invites/")
        await live(page)
    assert (
        await viewer.locator("[data-role=invite-form]").count() == 0
        or not await viewer.locator("[data-role=invite-form]").is_visible()
    )
    number, call, error = (moderator.locator(f"[data-role=invite-{name}]") for name in ("number", "call", "error"))

    async def invite(text):
        await number.fill(text)
        await call.click()

    await invite("7004 (desk)")  # letters: refused on the page, nothing sent
    await error.wait_for(timeout=5000)
    assert "digits" in await error.inner_text()
    await invite("9001")  # outside the server's pattern: the server's answer
    await moderator.wait_for_function(
        "() => document.querySelector('[data-role=invite-error]').textContent.includes('may not be invited')",
        timeout=10000,
    )

    await invite("7004")  # rings and never answers: cancelled from its row
    ringing = moderator.locator("[data-role=invites-list] li[data-status=ringing]")
    await ringing.wait_for(timeout=15000)
    assert "7004" in await ringing.inner_text()
    await ringing.locator("[data-role=invite-cancel]").click()
    await ringing.wait_for(state="detached", timeout=15000)

    await invite("7002")  # busy
    await invite("7001")  # answers: into the room
    await eventually(
        lambda: db(lambda: room.participants.present().filter(caller_number="7001").exists())(), timeout=20
    )
    for page in (moderator, viewer):
        await page.locator("[data-role=roster-body] [data-participant-id]", has_text="7001").wait_for(timeout=10000)
        await page.wait_for_function(
            "() => ['7004 cancelled', '7002: busy', '7001 answered'].every("
            "t => document.querySelector('[data-role=timeline]').textContent.includes(t))",
            timeout=15000,
        )
    # A sound to the room from the page: the server's list, the Play button; the viewer has neither.
    assert await viewer.locator("[data-role=announce-play]").count() == 0
    assert await moderator.locator("[data-role=announce-sound] option").all_inner_texts() == ["Welcome"]
    await moderator.locator("[data-role=announce-play]").click()
    await eventually(
        lambda: db(lambda: room.events.filter(kind="played", details__sound="welcome").exists())(), timeout=10
    )
    assert not await moderator.locator("[data-role=announce-error]").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await moderator.screenshot(path=str(SCREENSHOTS / "room-invites-moderator.png"), full_page=True)
