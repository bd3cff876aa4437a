"""The error texts of the room socket's protocol, and each one in the language of the page that gets it.

A ``reply`` (and an ``error`` frame) carries ``error``: stable English text,
the same for every client (programs compare it; docs/protocol.md lists
them). Beside it the server sends ``error_text``: the same in the page's
language, so that a Russian page shows every error in Russian, counted ones
included ("3 caller(s) could not be changed"), and the page script keeps no
list of its own. Every text a reply can carry is here, marked for
translation; ``tests/test_translations.py`` checks each has its Russian.

The module owns the protocol's other names too: the frame types, the
actions and the close codes. The page scripts get actions and close codes
from here (``page_config``, through the page's ``json_script``): none is
typed under static/.
"""

import re

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext_noop, ngettext

# --- frame types (server to client) -------------------------------------------------------------

SNAPSHOT = "snapshot"
PARTICIPANT_JOINED = "participant.joined"
PARTICIPANT_UPDATED = "participant.updated"
PARTICIPANT_LEFT = "participant.left"
CONFERENCE_UPDATED = "conference.updated"
ASTERISK_STATUS = "asterisk.status"
REPLY = "reply"
ERROR = "error"
ROOMS = "rooms"  # the room list socket's whole list
RECORDING_FINISHED = "recording.finished"  # a recording is stored: its download_url is null for who may not
INVITE_UPDATED = "invite.updated"  # an invitation by number: dialing, ringing, then how it ended
PARTICIPANT_FRAMES = (PARTICIPANT_JOINED, PARTICIPANT_UPDATED, PARTICIPANT_LEFT)
FRAME_TYPES = (
    SNAPSHOT,
    *PARTICIPANT_FRAMES,
    CONFERENCE_UPDATED,
    RECORDING_FINISHED,
    INVITE_UPDATED,
    ASTERISK_STATUS,
    REPLY,
    ERROR,
    ROOMS,
)

# --- actions (client to server) -----------------------------------------------------------------

RESYNC = "resync"  # anyone: answered with a fresh snapshot, then its reply
# The moderator's actions (conferences/moderation.py carries them to the worker).
ACTIONS = (
    "mute",
    "unmute",
    "kick",
    "lower_hand",
    "admit",
    "deny",
    "mute_all",
    "unmute_all",
    "lock",
    "unlock",
    "admit_all",
    "lobby_on",
    "lobby_off",
    "open_room",
    "record_start",
    "record_stop",
    "invite",  # with "number"
    "cancel_invite",  # with "invite": an open invite's id
    "play",  # with "sound": a name from the server's list (Sound)
)
# Actions on one caller: a present one, or (WAITING_ACTIONS) one waiting in the lobby or for the leader.
PARTICIPANT_ACTIONS = ("mute", "unmute", "kick", "lower_hand", "admit", "deny")
WAITING_ACTIONS = ("admit", "deny")

# --- close codes ----------------------------------------------------------------------------------
# A server may send only 1000 or a code from 3000–4999 in its own close frame: autobahn (under
# daphne) refuses the rest with an exception, so a server error is 4011, not the protocol's 1011
# (daphne sends 1011 itself only for an exception that escapes the application, which ours never
# let happen). docs/protocol.md explains each.

NOT_LOGGED_IN = 4401
FORBIDDEN = 4403
NOT_FOUND = 4404
TOO_MANY_SOCKETS = 4429
# The server failed while handling the socket (an error, the channel layer gone): the page reconnects.
SERVER_ERROR = 4011
# The page did not take its frames: more than WEBSOCKET_MAX_QUEUED_BYTES waited for it
# (conferences/consumers.py, FanOutConsumer). The page reconnects and gets a fresh snapshot.
TOO_SLOW = 4008
# Refusals: the page says why and does not reconnect by itself, except after the delay given
# here (ms: too many pages open passes when others close).
REFUSALS = (NOT_LOGGED_IN, FORBIDDEN, NOT_FOUND, TOO_MANY_SOCKETS)
RETRY_AFTER_MS = {TOO_MANY_SOCKETS: 30000}


def close_codes_config():
    """The close codes as the page scripts read them (JSON keys are strings)."""
    return {
        "refusals": list(REFUSALS),
        "retry_after_ms": {str(code): ms for code, ms in RETRY_AFTER_MS.items()},
        "not_logged_in": NOT_LOGGED_IN,
    }


def actions_config():
    """The action names as the room page's script reads them: ``{"MUTE": "mute", …, "RESYNC": "resync"}``."""
    return {**{name.upper(): name for name in ACTIONS}, "RESYNC": RESYNC}


# --- errors ---------------------------------------------------------------------------------------

ERRORS = (
    gettext_noop("no such participant in this room"),
    gettext_noop("no such waiting caller in this room"),
    gettext_noop("this caller waits for the leader: open the room"),
    gettext_noop("the room is full"),
    gettext_noop("the caller is already on the way in"),
    gettext_noop("this room is never recorded"),
    gettext_noop("the room is being recorded already"),
    gettext_noop("the room is not being recorded"),
    gettext_noop("nobody is in the room"),
    gettext_noop("invites are not set up for this room's server"),
    gettext_noop("a number holds only 0-9 * # + (at most 32)"),
    gettext_noop("this number may not be invited"),
    gettext_noop("too many invites are ringing in this room"),
    gettext_noop("too many invites lately; try again in a few minutes"),
    gettext_noop("no such invite ringing in this room"),
    gettext_noop("no such sound on this room's server"),
    gettext_noop("participant missing or invalid"),
    gettext_noop("the caller has already left"),
    gettext_noop("you may not moderate this room"),
    gettext_noop("the link to Asterisk is down"),
    gettext_noop("the Asterisk worker did not answer; try again when the link is up"),
    gettext_noop("too many messages; slow down"),
    gettext_noop("unknown action"),
    gettext_noop("no such room"),
    gettext_noop("Asterisk refused the request"),
    gettext_noop("request_id already in use"),
    gettext_noop("you are not logged in"),
    gettext_noop("the database is unavailable; try again"),
    gettext_noop("the server is busy; try again"),
    gettext_noop("the request failed; try again"),
    gettext_noop("message too large"),
    gettext_noop("message too deeply nested"),
    gettext_noop("not JSON"),
    gettext_noop("number out of range"),
    gettext_noop("expected a JSON object"),
    gettext_noop("request_id missing or invalid"),
    gettext_noop("send JSON text frames"),
)
_KNOWN = frozenset(ERRORS)

# Mute all / unmute all when some callers' channels refused: "<n> caller(s) could not be changed".
CALLERS_NOT_CHANGED = "{count} caller(s) could not be changed"
_CALLERS_NOT_CHANGED = re.compile(r"^(\d{1,9}) caller\(s\) could not be changed$")


def callers_not_changed(count):
    return CALLERS_NOT_CHANGED.format(count=count)


def localized(error, language):
    """``error`` (a protocol text) in ``language``; a text this module does not know stays as it is."""
    text = str(error or "")
    with translation.override(language):
        if text in _KNOWN:
            return translation.gettext(text)
        counted = _CALLERS_NOT_CHANGED.match(text)
        if counted:
            count = int(counted.group(1))
            return ngettext(
                "%(count)s caller could not be changed", "%(count)s callers could not be changed", count
            ) % {"count": count}
    return text


MAX_ACCEPT_LANGUAGE = 500


def language_of(scope):
    """The language a socket's page is in: the language cookie, else Accept-Language, else the site's.

    What Django's LocaleMiddleware picks for the page itself (without the URL
    prefix, which this site does not use).
    """
    from django.utils.translation import trans_real

    cookie = (scope.get("cookies") or {}).get(settings.LANGUAGE_COOKIE_NAME)
    candidates = [cookie] if cookie else []
    for name, value in scope.get("headers") or ():
        if name == b"accept-language":
            header = value.decode("latin-1")
            if len(header) > MAX_ACCEPT_LANGUAGE:  # cut at a comma, as Django does: the first entries stay
                header = header[:MAX_ACCEPT_LANGUAGE].rsplit(",", 1)[0]
            for code, _quality in trans_real.parse_accept_lang_header(header):
                if code == "*":
                    break  # as Django's LocaleMiddleware: the languages after "*" do not count
                candidates.append(code)
            break
    for code in candidates:
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE
