import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404, render

from conferences import access, protocol
from conferences.models import Conference, present_filter, waiting_filter


@login_required
def conference_list(request):
    """The rooms the user may see, with how many people are in each."""
    conferences = (
        access.conferences_visible_to(request.user)
        .select_related("server")
        .annotate(
            present_count=Count("participants", filter=present_filter("participants")),
            waiting_count=Count("participants", filter=waiting_filter("participants")),
        )
        .order_by("name")
    )
    return render(
        request,
        "conferences/conference_list.html",
        {"conferences": conferences, "close_codes": json.dumps(protocol.close_codes_config())},
    )


@login_required
def conference_detail(request, slug):
    """A room's page: 404 when there is no such room, 403 without access."""
    conference = get_object_or_404(Conference.objects.select_related("server"), slug=slug)
    role = access.conference_role(request.user, conference)
    if role is None:
        raise PermissionDenied
    participants = conference.participants.present()
    waiting = conference.participants.waiting().order_by("joined_at", "id")
    can_moderate = role == access.MODERATOR

    # The live page's settings and every string its script shows, for json_script.
    from urllib.parse import urlencode

    from django.urls import reverse
    from django.utils.translation import gettext as _

    strings = {
        "room_number": _("room %(number)s"),
        "unknown": _("unknown"),
        "nobody": _("Nobody is in this room."),
        "no_events": _("No events yet."),
        "talking": _("talking"),
        "talked": _("talked %(duration)s"),
        "record_start": _("Record"),
        "record_stop": _("Stop recording"),
        "event_recording_on": _("Recording started"),
        "event_recording_off": _("Recording stopped"),
        "event_recording_stored": _("A recording is stored: the room's history has it"),
        "muted": _("muted"),
        "muted_self": _("muted (by themself)"),
        "muted_moderator": _("muted by a moderator"),
        "hand_raised": _("hand raised · %(position)s"),
        "lower_hand": _("Lower hand"),
        "lower_hand_label": _("Lower the hand of %(name)s"),
        "event_hand_raised": _("%(name)s raised the hand"),
        "event_hand_lowered": _("%(name)s lowered the hand"),
        "admin": _("admin"),
        "moh": _("music on hold"),
        "asterisk_connected": _("connected"),
        "asterisk_down": _("down"),
        "socket_connecting": _("connecting…"),
        "socket_live": _("live"),
        "socket_reconnecting": _("reconnecting in %(seconds)s s"),
        "socket_refused": _("refused: %(reason)s"),
        "refused_4401": _("you are not logged in"),
        "refused_4403": _("you have no access to this room"),
        "refused_4404": _("this room does not exist"),
        "refused_4429": _("you have too many pages open; this one tries again in a while"),
        "log_in": _("Log in again"),
        "actions": _("Actions"),
        "mute": _("Mute"),
        "unmute": _("Unmute"),
        "kick": _("Kick"),
        "mute_label": _("Mute %(name)s"),
        "unmute_label": _("Unmute %(name)s"),
        "kick_label": _("Kick %(name)s"),
        "mute_all": _("Mute all"),
        "unmute_all": _("Unmute all"),
        "lock": _("Lock room"),
        "unlock": _("Unlock room"),
        "kick_confirm": _("Kick %(name)s out of the room?"),
        "cancel": _("Cancel"),
        "pending": _("Waiting for the server…"),
        "no_answer": _("The server did not answer in time."),
        "not_connected": _("Not connected to the server; try again in a moment."),
        "connection_lost": _("The connection was lost before the server answered."),
        "event_joined": _("%(name)s joined"),
        "event_left_hangup": _("%(name)s hung up"),
        "event_left_kicked": _("%(name)s was kicked"),
        "event_left_lost": _("%(name)s was lost (the call dropped)"),
        "event_left": _("%(name)s left"),
        "event_muted": _("%(name)s was muted"),
        "event_unmuted": _("%(name)s was unmuted"),
        "event_locked": _("The room was locked"),
        "event_unlocked": _("The room was unlocked"),
        "event_link_up": _("The link to Asterisk is up"),
        "event_link_down": _("The link to Asterisk is down"),
        # The lobby and the leader.
        "waiting_count": _("%(count)s waiting"),
        "waiting_since": _("waiting since"),
        "waiting_for_lobby": _("waits to be admitted"),
        "waiting_for_leader": _("waits for the leader"),
        "admit": _("Admit"),
        "deny": _("Deny"),
        "admit_label": _("Admit %(name)s"),
        "deny_label": _("Turn %(name)s away"),
        "deny_confirm": _("Turn %(name)s away from the room?"),
        "admit_all": _("Admit all"),
        "lobby_state_on": _("Lobby: on"),
        "lobby_state_off": _("Lobby: off"),
        "open_room": _("Open the room"),
        "event_waiting_lobby": _("%(name)s is waiting in the lobby"),
        "event_waiting_leader": _("%(name)s is waiting for the leader"),
        "event_admitted": _("%(name)s was admitted"),
        "event_denied": _("%(name)s was turned away"),
        "event_left_ended": _("%(name)s left (the room ended with its leader)"),
        "event_waiting_left_hangup": _("%(name)s hung up while waiting"),
        "event_waiting_left_lost": _("%(name)s was lost while waiting (the call dropped)"),
        "event_waiting_left": _("%(name)s is no longer waiting"),
        "event_lobby_on": _("The lobby was turned on"),
        "event_lobby_off": _("The lobby was turned off"),
        # A moderator's sounds.
        "announce_heading": _("Play to the room"),
        "announce_sound_label": _("Sound"),
        "announce_play": _("Play"),
        # Invitations by number: the moderator's form and list, and the timeline's words for everyone.
        "invites_heading": _("Invite by number"),
        "invite_number_label": _("Phone number"),
        "invite_call": _("Call"),
        "invite_number_invalid": _("Enter a phone number: digits, *, # and + only, at most 32."),
        "invites_list_heading": _("Invitations"),
        "invite_dialing": _("dialing…"),
        "invite_ringing": _("ringing…"),
        "invite_cancel": _("Cancel"),
        "invite_cancel_label": _("Cancel the call to %(number)s"),
        "invite_number_hidden": _("a number"),
        "event_invite_started": _("Calling %(number)s…"),
        "event_invite_answered": _("Call to %(number)s answered"),
        "event_invite_busy": _("Call to %(number)s: busy"),
        "event_invite_no_answer": _("Call to %(number)s: no answer"),
        "event_invite_failed": _("Call to %(number)s failed"),
        "event_invite_cancelled": _("Call to %(number)s cancelled"),
        "event_invite": _("The call to %(number)s ended"),
    }
    room_config = {
        "ws_path": f"/ws/conferences/{conference.slug}/",
        "slug": conference.slug,
        "can_moderate": can_moderate,
        # Invites by number: a moderator, on a server with a way to dial (the server checks both again).
        "can_invite": can_moderate and bool(conference.server.dial_template),
        # The sounds a moderator may play to the room (the server's list; the worker checks the name again).
        "sounds": (
            [{"name": s.name, "label": s.label} for s in conference.server.sounds.all()] if can_moderate else []
        ),
        "login_url": f"{reverse('login')}?{urlencode({'next': request.get_full_path()})}",
        "timeline_limit": 100,
        "strings": strings,
        # The protocol's names the page uses: no action name or close code is typed under static/.
        "actions": protocol.actions_config(),
        "close_codes": protocol.close_codes_config(),
    }
    return render(
        request,
        "conferences/conference_detail.html",
        {
            "conference": conference,
            "participants": participants,
            "waiting": waiting,
            "can_moderate": can_moderate,
            "asterisk_connected": conference.server.connected,
            "room_config": room_config,
            "recent_events": recent_events(conference),
        },
    )


RECENT_EVENTS = 20


def recent_events(conference):
    """The room's last stored events, newest first, in words: the live page's timeline opens with them."""
    from conferences import history

    events = conference.events.select_related("participant").order_by("-created_at", "-id")[:RECENT_EVENTS]
    return [{"kind": event.kind, "at": event.created_at, "text": history.describe(event)} for event in events]
