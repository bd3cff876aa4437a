"""The shapes the API answers with: the room socket's (conferences/broadcast.py), documented for OpenAPI.

Each allows extra fields: a field the socket protocol gains reaches API
clients too, instead of being cut off by a schema that was not updated.
"""

from datetime import date, datetime

from ninja import Schema
from pydantic import ConfigDict, Field, StrictInt, StrictStr

from conferences import frames


class Open(Schema):
    model_config = ConfigDict(extra="allow")


class Error(Schema):
    error: str = Field(description="stable English text: compare this")
    error_text: str = Field(description="the same in the request's language: show this")


class ConferenceOut(Open):
    slug: str
    name: str
    number: str
    locked: bool
    lobby: bool
    wait_for_leader: bool
    when_leader_leaves: str
    recording: bool
    record_mode: str
    participant_count: int
    waiting_count: int


class RoomOut(ConferenceOut):
    asterisk: dict = Field(description='{"connected": bool}')
    can_moderate: bool
    seq: int


class ParticipantOut(Open):
    id: int
    caller_number: str
    caller_name: str
    role: str
    status: str = Field(description="present or waiting")
    waiting_for: str | None
    joined_at: datetime | None
    muted: bool
    mute_source: str | None
    talking: bool
    talk_seconds: float
    moh: bool
    hand_raised: bool
    hand_raised_at: datetime | None


class InviteOut(Open):
    id: int
    number: str
    status: str
    participant: int | None
    created_at: datetime | None


class RoomDetailOut(Schema):
    """The room socket's snapshot."""

    seq: int
    conference: ConferenceOut
    participants: list[ParticipantOut]
    invites: list[InviteOut]
    asterisk: dict
    can_moderate: bool


class ParticipantsOut(Schema):
    participants: list[ParticipantOut]


class InvitesOut(Schema):
    invites: list[InviteOut]


class CallerOut(Schema):
    id: int
    caller_name: str
    caller_number: str


class EventOut(Schema):
    id: int
    kind: str
    time: datetime
    participant: CallerOut | None
    actor: str | None = Field(description="the username of who did it (moderator actions)")
    details: dict
    text: str = Field(description="what happened, in words, in the request's language")


class Page(Schema):
    older: str | None = Field(description="cursor: pass as before= for the next (older) page")
    newer: str | None = Field(description="cursor: pass as after= for the previous (newer) page")


class PageQuery(Schema):
    """The query of a paged list: ``from`` / ``to`` whole days (inclusive, the site's time zone), a page's
    cursor (``before``: its ``older``; ``after``: its ``newer``) and ``limit`` (capped by each list)."""

    date_from: date | None = Field(None, alias="from", description="first day, YYYY-MM-DD")
    date_to: date | None = Field(None, alias="to", description="last day, YYYY-MM-DD")
    before: str | None = Field(None, max_length=64, description="the older cursor of a page: the page after it")
    after: str | None = Field(None, max_length=64, description="the newer cursor of a page: the page before it")
    limit: int | None = Field(
        None, ge=1, le=100, description="rows per page: history 100, attendance 20, recordings 50 at most"
    )


class HistoryOut(Page):
    events: list[EventOut]


class AttendeeOut(Schema):
    caller_name: str
    caller_number: str
    present_seconds: float
    talked_seconds: float
    stays: int
    kicked: bool
    lost: bool
    still_present: bool


class MeetingOut(Schema):
    id: int | None
    start: datetime
    end: datetime | None
    duration_seconds: float
    ongoing: bool
    cut: bool = Field(description="true: the attendees come from the most recent stays only")
    attendees: list[AttendeeOut]


class AttendanceOut(Page):
    meetings: list[MeetingOut]


class RecordingOut(Schema):
    id: int
    state: str
    started_at: datetime
    stopped_at: datetime | None
    duration: float | None
    size: int | None
    meeting: int | None
    download_url: str | None = Field(description="null: not stored, or the caller may not download")


class RecordingsOut(Page):
    recordings: list[RecordingOut]


class ActionIn(Schema):
    """What an action carries: ``participant`` (mute, unmute, kick, lower_hand, admit, deny), ``number``
    (invite), ``invite`` (cancel_invite), ``sound`` (play). Ids are JSON integers, not strings."""

    model_config = ConfigDict(extra="forbid")

    participant: StrictInt | None = Field(None, ge=1, le=frames.MAX_ID)
    number: StrictStr | None = Field(None, max_length=64)
    invite: StrictInt | None = Field(None, ge=1, le=frames.MAX_ID)
    sound: StrictStr | None = Field(None, max_length=64)


class ActionOut(Schema):
    ok: bool
