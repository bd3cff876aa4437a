"""Data model: Asterisk servers, rooms, who may see them, who is in them, what happened."""

import re

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from conferences.ari import address

DEFAULT_SERVER_NAME = "default"

digits_validator = RegexValidator(r"^[0-9]+$", _("Use digits only."))
# The keys a caller presses during the call (conferences/ari/rules.py, keypad).
KEYPAD_MAX_KEYS = 4
KEYPAD_PATTERN = r"^[0-9*#]{1,4}$"
keypad_validator = RegexValidator(KEYPAD_PATTERN, _("Use 1 to 4 of the keys 0-9, * and #."))


def keypad_field(verbose_name, default, help_text):
    """A room's key sequence; a database default too (rows written by the previous release)."""
    return models.CharField(
        verbose_name,
        max_length=KEYPAD_MAX_KEYS,
        default=default,
        db_default=default,
        validators=[keypad_validator],
        help_text=help_text,
    )


def validate_ari_url(value):
    """An ARI base URL: http(s), a host (a bare intranet name is fine), an optional port, no credentials."""
    problem = address.http_url_problem(value)
    if problem is not None:
        raise ValidationError(f"{_('ARI URL')} {problem}", code="invalid")


DEFAULT_INVITE_PATTERN = "[0-9]{2,6}"
# Tech/resource with {number} once: no spaces, braces, "&" (a second destination) or "," (Dial options).
DIAL_TEMPLATE = re.compile(r"[A-Za-z0-9_-]{1,32}/[^\s{}&,]*\{number\}[^\s{}&,]*")


def validate_dial_template(value):
    """``Tech/…{number}…``: one ``{number}``, no spaces, no other braces, no ``&`` or ``,``."""
    if value and (not DIAL_TEMPLATE.fullmatch(value) or value.count("{number}") != 1):
        raise ValidationError(
            _("A dial string with {number} once, e.g. PJSIP/{number}@trunk or Local/{number}@from-internal."),
            code="invalid",
        )


def validate_invite_pattern(value):
    """A regular expression RE2 compiles (linear-time matching: conferences/ari/rules.py)."""
    from conferences.ari import rules

    try:
        rules.compile_number_pattern(value)
    except Exception as exc:  # re2.error
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValidationError(
            _("Not a regular expression RE2 accepts (no look-arounds or back-references): %(error)s"),
            code="invalid",
            params={"error": detail},
        ) from None


class AsteriskServerQuerySet(models.QuerySet):
    def sync_default_from_settings(self):
        """Create or update the server named ``default`` from ``ARI_*`` settings.

        Returns the server, or ``None`` when ``ARI_URL`` is not set.
        """
        if not settings.ARI_URL:
            return None
        server, _created = self.update_or_create(
            name=DEFAULT_SERVER_NAME,
            defaults={
                "ari_url": settings.ARI_URL,
                "username": settings.ARI_USERNAME or "",
                "password": settings.ARI_PASSWORD or "",
                "app_name": settings.ARI_APP,
            },
        )
        return server


class AsteriskServer(models.Model):
    """An Asterisk PBX reached over ARI, and the live state of the worker's link to it."""

    name = models.SlugField(_("name"), max_length=64, unique=True)
    ari_url = models.CharField(
        _("ARI URL"),
        max_length=255,
        validators=[validate_ari_url],
        help_text=_("For example http://127.0.0.1:8088/ari"),
    )
    username = models.CharField(_("ARI username"), max_length=128)
    password = models.CharField(_("ARI password"), max_length=256)
    app_name = models.CharField(
        _("Stasis application"),
        max_length=64,
        default="conference",
        validators=[RegexValidator(r"^[A-Za-z0-9_.-]+$", _("Letters, digits, dot, dash, underscore."))],
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    # Invites by number (conferences/ari/invites.py): how the worker dials, and what it may dial.
    dial_template = models.CharField(
        _("dial template"),
        max_length=200,
        blank=True,
        default="",
        db_default="",
        validators=[validate_dial_template],
        help_text=_(
            "How invites are dialled, with {number} for the number: PJSIP/{number}@trunk or "
            "Local/{number}@from-internal. Empty: no invites from this server."
        ),
    )
    invite_pattern = models.CharField(
        _("numbers that may be invited"),
        max_length=200,
        default=DEFAULT_INVITE_PATTERN,
        db_default=DEFAULT_INVITE_PATTERN,
        validators=[validate_invite_pattern],
        help_text=_(
            "A regular expression the whole number must match; the default allows internal extensions "
            "(2 to 6 digits) only. Numbers hold only 0-9 * # + in any case, and emergency numbers and the "
            "server's room numbers are never invited."
        ),
    )

    # Link status, written by the worker only.
    connected = models.BooleanField(_("connected"), default=False, editable=False)
    status_since = models.DateTimeField(_("status since"), null=True, blank=True, editable=False)
    last_error = models.TextField(_("last error"), blank=True, editable=False)
    last_seen_at = models.DateTimeField(
        _("last heard from"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("When the worker last confirmed the link (event or ping)."),
    )
    # The lease that makes one worker the only one for this server (host:pid:token).
    worker_owner = models.CharField(_("worker"), max_length=200, blank=True, editable=False)
    worker_lease_until = models.DateTimeField(_("worker lease until"), null=True, blank=True, editable=False)

    objects = AsteriskServerQuerySet.as_manager()

    class Meta:
        verbose_name = _("Asterisk server")
        verbose_name_plural = _("Asterisk servers")
        ordering = ["name"]

    def __str__(self):
        return self.name

    def __repr__(self):
        # Never the password: reprs end up in logs and error reports.
        return f"<AsteriskServer {self.pk}: {self.name} {self.ari_url}>"


class Conference(models.Model):
    """A conference room: callers dial ``number`` on ``server``; the page lives at ``slug``."""

    class RecordMode(models.TextChoices):
        NEVER = "never", _("never")
        ON_DEMAND = "on_demand", _("when a moderator starts it")
        ALWAYS = "always", _("always (from the first caller in)")

    class RecordDownload(models.TextChoices):
        MODERATORS = "moderators", _("moderators")
        VIEWERS = "viewers", _("viewers and moderators")

    class LeaderLeaves(models.TextChoices):
        STAY = "stay", _("the others stay")
        END = "end", _("the room ends: the others are hung up")
        WAIT = "wait", _("the others wait for the leader again")

    server = models.ForeignKey(
        AsteriskServer, on_delete=models.PROTECT, related_name="conferences", verbose_name=_("server")
    )
    number = models.CharField(
        _("room number"),
        max_length=32,
        validators=[digits_validator],
        help_text=_("The digits callers dial; passed to Stasis() by the dialplan."),
    )
    slug = models.SlugField(_("slug"), max_length=64, unique=True, help_text=_("Used in page URLs."))
    name = models.CharField(_("name"), max_length=128)
    moh_class = models.CharField(
        _("music on hold class"),
        max_length=64,
        default="default",
        help_text=_("Played to a caller who is alone in the room."),
    )
    max_participants = models.PositiveIntegerField(
        _("max participants"), null=True, blank=True, help_text=_("Empty for no limit.")
    )
    pin = models.CharField(
        _("PIN"),
        max_length=16,
        blank=True,
        validators=[digits_validator],
        help_text=_("Digits callers must enter to join; empty for none."),
    )
    locked = models.BooleanField(_("locked"), default=False)
    keypad_hand = keypad_field(
        _("keys: raise or lower the hand"),
        "*1",
        _("What a caller presses during the call (0-9, * and #, at most 4 keys)."),
    )
    keypad_mute = keypad_field(
        _("keys: mute or unmute oneself"),
        "*6",
        _("Not for a caller a moderator muted (0-9, * and #, at most 4 keys)."),
    )
    lobby = models.BooleanField(
        _("lobby"),
        default=False,
        db_default=False,
        help_text=_("New callers wait, hearing music, until a moderator admits them. Admin callers skip it."),
    )
    wait_for_leader = models.BooleanField(
        _("wait for the leader"),
        default=False,
        db_default=False,
        help_text=_("Callers wait, hearing music, until an admin caller is in or a moderator opens the room."),
    )

    when_leader_leaves = models.CharField(
        _("when the last leader leaves"),
        max_length=8,
        choices=LeaderLeaves.choices,
        default=LeaderLeaves.STAY,
        db_default=LeaderLeaves.STAY,
        help_text=_("A leader is an admin caller."),
    )
    record_mode = models.CharField(
        _("recording"),
        max_length=16,
        choices=RecordMode.choices,
        default=RecordMode.ON_DEMAND,
        db_default=RecordMode.ON_DEMAND,
    )
    record_announcement = models.CharField(
        _("recording announcement"),
        max_length=64,
        default="conf-now-recording",
        db_default="conf-now-recording",
        validators=[RegexValidator(r"^[A-Za-z0-9_/-]+$", _("An Asterisk sound name, e.g. conf-now-recording."))],
        help_text=_("The sound the room hears when recording starts, and callers who join while it records."),
    )
    record_download = models.CharField(
        _("who may download recordings"),
        max_length=16,
        choices=RecordDownload.choices,
        default=RecordDownload.MODERATORS,
        db_default=RecordDownload.MODERATORS,
    )
    join_leave_tones = models.BooleanField(
        _("join and leave tones"),
        default=False,
        db_default=False,
        help_text=_("The room hears a tone when someone joins or leaves."),
    )
    announce_only_person = models.BooleanField(
        _("tell a lone caller"),
        default=False,
        db_default=False,
        help_text=_('A caller entering an empty room hears "you are the only person in this conference".'),
    )
    invite_caller_id = models.CharField(
        _("caller ID of invites"),
        max_length=80,
        blank=True,
        default="",
        db_default="",
        help_text=_("What an invited phone shows, with {name} and {number} for the room's. Empty: {name} <{number}>."),
    )
    invite_ring_seconds = models.PositiveSmallIntegerField(
        _("ring invites for (seconds)"),
        default=30,
        db_default=30,
        validators=[MinValueValidator(5), MaxValueValidator(120)],
    )
    max_open_invites = models.PositiveSmallIntegerField(
        _("invites ringing at once"),
        default=5,
        db_default=5,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
    )
    record_retention_days = models.PositiveIntegerField(
        _("keep recordings for (days)"), default=90, db_default=90, validators=[MinValueValidator(1)]
    )
    # Written by the worker: a recording of the room is being written right now.
    recording = models.BooleanField(_("recording now"), default=False, db_default=False, editable=False)
    seq = models.PositiveBigIntegerField(
        _("event sequence"), default=0, editable=False, help_text=_("Number of the room's last event.")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("conference")
        verbose_name_plural = _("conferences")
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["server", "number"], name="conference_number_unique_per_server"),
            models.CheckConstraint(condition=Q(number__regex=r"^[0-9]+$"), name="conference_number_digits"),
            models.CheckConstraint(condition=Q(pin="") | Q(pin__regex=r"^[0-9]+$"), name="conference_pin_digits"),
            models.CheckConstraint(
                condition=Q(max_participants__isnull=True) | Q(max_participants__gte=1),
                name="conference_max_participants_positive",
            ),
            models.CheckConstraint(condition=~Q(slug=""), name="conference_slug_not_empty"),
            models.CheckConstraint(
                condition=Q(keypad_hand__regex=KEYPAD_PATTERN) & Q(keypad_mute__regex=KEYPAD_PATTERN),
                name="conference_keypad_keys",
            ),
            models.CheckConstraint(
                condition=Q(when_leader_leaves__in=["stay", "end", "wait"]), name="conference_when_leader_leaves_valid"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.number})"

    def get_absolute_url(self):
        return reverse("conference-detail", kwargs={"slug": self.slug})

    def clean(self):
        super().clean()
        hand, mute = self.keypad_hand or "", self.keypad_mute or ""
        if hand and mute and (hand in mute or mute in hand):
            # Keys are read as they come: the shorter would fire before the longer is complete.
            raise ValidationError(
                {"keypad_mute": _("The two key sequences must differ, and neither may contain the other.")}
            )


class ConferenceAccess(models.Model):
    """Grants one user or one group the viewer or moderator role in a room."""

    class Role(models.TextChoices):
        VIEWER = "viewer", _("viewer")
        MODERATOR = "moderator", _("moderator")

    conference = models.ForeignKey(
        Conference, on_delete=models.CASCADE, related_name="access", verbose_name=_("conference")
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="conference_access",
        verbose_name=_("user"),
    )
    group = models.ForeignKey(
        Group,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="conference_access",
        verbose_name=_("group"),
    )
    role = models.CharField(_("role"), max_length=16, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        verbose_name = _("access")
        verbose_name_plural = _("access")
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="access_user_xor_group",
                violation_error_message=_("Name either a user or a group, not both."),
            ),
            models.UniqueConstraint(
                fields=["conference", "user"], condition=Q(user__isnull=False), name="access_unique_user"
            ),
            models.UniqueConstraint(
                fields=["conference", "group"], condition=Q(group__isnull=False), name="access_unique_group"
            ),
            models.CheckConstraint(condition=Q(role__in=["viewer", "moderator"]), name="access_role_valid"),
        ]

    def __str__(self):
        return f"{self.user or self.group}: {self.get_role_display()} of {self.conference}"


class Meeting(models.Model):
    """One meeting of a room: from a join into the empty room until nobody is left.

    Kept by the services (a join attaches to the room's open meeting or opens
    one; the leave that empties the room ends it), so the history page reads
    meetings and the stays of the few it shows instead of grouping every stay
    of the room on each request. Stays that overlap or touch belong to one
    meeting, so a room's meetings never overlap and at most one is open.
    """

    # db_index=False: the (conference, started_at, id) index below serves the foreign key too.
    conference = models.ForeignKey(
        Conference, on_delete=models.CASCADE, related_name="meetings", verbose_name=_("conference"), db_index=False
    )
    started_at = models.DateTimeField(_("started at"))
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True, help_text=_("Empty while it goes on."))

    class Meta:
        verbose_name = _("meeting")
        verbose_name_plural = _("meetings")
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conference"], condition=Q(ended_at__isnull=True), name="meeting_one_open_per_conference"
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")),
                name="meeting_ends_after_start",
            ),
        ]
        indexes = [
            # A room's meetings newest first, pages of them (keyset) and the date filter.
            models.Index(fields=["conference", "started_at", "id"], name="meeting_conference_start_idx"),
        ]

    def __str__(self):
        return f"{self.conference_id} from {self.started_at:%Y-%m-%d %H:%M:%S}"

    @property
    def ongoing(self):
        return self.ended_at is None


def _on(relation, lookups):
    return Q(**{f"{relation}__{name}" if relation else name: value for name, value in lookups.items()})


def present_filter(relation=""):
    """The one home of "present" (in the room itself: not left, not waiting), as a Q on Participant or through
    ``relation``. Counts, max participants, mute and kick targets and attendance mean these."""
    return _on(relation, {"left_at__isnull": True, "status": "present"})


def in_room_filter(relation=""):
    """Present or waiting (in the lobby, or for the leader): every caller a room's page lists."""
    return _on(relation, {"left_at__isnull": True})


def waiting_filter(relation=""):
    return _on(relation, {"left_at__isnull": True, "status": "waiting"})


class PresentParticipantQuerySet(models.QuerySet):
    def present(self):
        return self.filter(present_filter())

    def in_room(self):
        return self.filter(in_room_filter())

    def waiting(self):
        return self.filter(waiting_filter())


class Participant(models.Model):
    """A caller's stay in a room, from entering the bridge to leaving it."""

    class Role(models.TextChoices):
        PARTICIPANT = "participant", _("participant")
        ADMIN = "admin", _("admin")

    class LeftReason(models.TextChoices):
        HANGUP = "hangup", _("hung up")
        KICKED = "kicked", _("kicked")
        LOST = "lost", _("lost")
        DENIED = "denied", _("turned away from the lobby")
        ENDED = "ended", _("the room ended with its leader")

    class Status(models.TextChoices):
        PRESENT = "present", _("present")
        WAITING = "waiting", _("waiting")

    class WaitingFor(models.TextChoices):
        LOBBY = "lobby", _("admission")
        LEADER = "leader", _("the leader")

    class MuteSource(models.TextChoices):
        MODERATOR = "moderator", _("by a moderator")
        SELF = "self", _("by themself")

    conference = models.ForeignKey(
        Conference, on_delete=models.CASCADE, related_name="participants", verbose_name=_("conference")
    )
    # The conference's server, kept here so the database can enforce that an
    # ARI channel id names one participant per server, which also means at most
    # one present participant per channel.
    server = models.ForeignKey(
        AsteriskServer, on_delete=models.CASCADE, related_name="participants", verbose_name=_("server")
    )
    channel_id = models.CharField(_("ARI channel id"), max_length=128)
    caller_number = models.CharField(_("caller number"), max_length=80, blank=True)
    caller_name = models.CharField(_("caller name"), max_length=80, blank=True)
    role = models.CharField(_("role"), max_length=16, choices=Role.choices, default=Role.PARTICIPANT)
    # Waiting (in the lobby or for the leader) or present. A waiting caller's joined_at is its arrival;
    # once admitted, the admission (its stay in the room starts then, and its meeting with it).
    status = models.CharField(
        _("status"), max_length=8, choices=Status.choices, default=Status.PRESENT, db_default=Status.PRESENT
    )
    waiting_for = models.CharField(
        _("waiting for"), max_length=8, choices=WaitingFor.choices, blank=True, default="", db_default=""
    )
    joined_at = models.DateTimeField(_("joined at"))
    left_at = models.DateTimeField(_("left at"), null=True, blank=True)
    left_reason = models.CharField(_("left reason"), max_length=16, choices=LeftReason.choices, blank=True)
    muted = models.BooleanField(_("muted"), default=False)
    # Who muted the caller (empty when not muted): a caller a moderator muted cannot unmute themself.
    # Read only with muted (no constraint ties them: the previous release's unmute, during an
    # upgrade, clears muted alone).
    # The new columns have database defaults too: rows written without them (the previous
    # release's processes during an upgrade, bulk loaders) get the same values.
    mute_source = models.CharField(
        _("muted by"), max_length=16, choices=MuteSource.choices, blank=True, default="", db_default=""
    )
    talking = models.BooleanField(_("talking"), default=False)
    # Seconds talked in this stay: each talking stretch's length as talk detection measured it, added
    # when the stretch ends (a stretch still open at the leave is closed then).
    talk_seconds = models.FloatField(_("seconds talked"), default=0.0, db_default=0.0)
    moh = models.BooleanField(_("music on hold"), default=False)
    hand_raised = models.BooleanField(_("hand raised"), default=False, db_default=False)
    hand_raised_at = models.DateTimeField(_("hand raised at"), null=True, blank=True)
    # Null only for a stay stored without the services (the services and the
    # migration that introduced meetings set it). db_index=False: the
    # (meeting, joined_at, id) index below serves the foreign key too.
    meeting = models.ForeignKey(
        Meeting,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="stays",
        verbose_name=_("meeting"),
        db_index=False,
    )

    objects = PresentParticipantQuerySet.as_manager()

    class Meta:
        verbose_name = _("participant")
        verbose_name_plural = _("participants")
        ordering = ["joined_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["server", "channel_id"], name="participant_channel_unique_per_server"),
            models.CheckConstraint(
                condition=(Q(left_at__isnull=True) & Q(left_reason=""))
                | (Q(left_at__isnull=False) & Q(left_reason__in=["hangup", "kicked", "lost", "denied", "ended"])),
                name="participant_left_reason_iff_left",
            ),
            models.CheckConstraint(
                condition=Q(status="present", waiting_for="")
                | Q(status="waiting", waiting_for__in=["lobby", "leader"]),
                name="participant_waiting_for_iff_waiting",
            ),
            models.CheckConstraint(condition=Q(role__in=["participant", "admin"]), name="participant_role_valid"),
            models.CheckConstraint(
                condition=Q(left_at__isnull=True) | Q(left_at__gte=models.F("joined_at")),
                name="participant_left_after_joined",
            ),
            models.CheckConstraint(condition=~Q(channel_id=""), name="participant_channel_id_not_empty"),
            models.CheckConstraint(
                condition=Q(hand_raised=False, hand_raised_at__isnull=True)
                | Q(hand_raised=True, hand_raised_at__isnull=False),
                name="participant_hand_raised_at_with_hand",
            ),
        ]
        indexes = [
            # The roster of a room: its present participants.
            models.Index(
                fields=["conference", "joined_at"],
                condition=Q(left_at__isnull=True),
                name="participant_present_idx",
            ),
            # Resync walks every present participant of one server.
            models.Index(fields=["server"], condition=Q(left_at__isnull=True), name="participant_server_present_idx"),
            # The stays of one meeting in join order, read a bounded slice at a time.
            models.Index(fields=["meeting", "joined_at", "id"], name="participant_meeting_idx"),
        ]

    def __str__(self):
        return f"{self.caller_name or self.caller_number or self.channel_id} in {self.conference_id}"

    def save(self, *args, **kwargs):
        if self.server_id is None:
            self.server_id = self.conference.server_id
        elif self.server_id != self.conference.server_id:
            raise ValueError("A participant's server must be its conference's server.")
        super().save(*args, **kwargs)

    @property
    def present(self):
        return self.left_at is None and self.status == self.Status.PRESENT

    @property
    def waiting(self):
        return self.left_at is None and self.status == self.Status.WAITING


class ConferenceEvent(models.Model):
    """One entry of a room's timeline and audit log."""

    class Kind(models.TextChoices):
        JOINED = "joined", _("joined")
        LEFT = "left", _("left")
        MUTED = "muted", _("muted")
        UNMUTED = "unmuted", _("unmuted")
        KICKED = "kicked", _("kicked")
        MUTED_ALL = "muted_all", _("muted all")
        UNMUTED_ALL = "unmuted_all", _("unmuted all")
        LOCKED = "locked", _("locked")
        UNLOCKED = "unlocked", _("unlocked")
        REFUSED = "refused", _("refused entry")
        HAND_RAISED = "hand_raised", _("raised the hand")
        HAND_LOWERED = "hand_lowered", _("lowered the hand")
        SELF_MUTED = "self_muted", _("muted themself")
        SELF_UNMUTED = "self_unmuted", _("unmuted themself")
        WAITING = "waiting", _("is waiting")
        ADMITTED = "admitted", _("admitted")
        DENIED = "denied", _("turned away")
        LOBBY_ON = "lobby_on", _("lobby turned on")
        LOBBY_OFF = "lobby_off", _("lobby turned off")
        ROOM_OPENED = "room_opened", _("room opened")
        ROOM_ENDED = "room_ended", _("room ended with its leader")
        ROOM_WAITING = "room_waiting", _("room waits for its leader")
        RECORDING_STARTED = "recording_started", _("recording started")
        RECORDING_STOPPED = "recording_stopped", _("recording stopped")
        RECORDING_FAILED = "recording_failed", _("recording failed")
        RECORDING_PURGED = "recording_purged", _("recording deleted after its retention")
        INVITED = "invited", _("invited by number")
        INVITE_ENDED = "invite_ended", _("invitation ended")
        PLAYED = "played", _("played a sound")

    conference = models.ForeignKey(
        Conference, on_delete=models.CASCADE, related_name="events", verbose_name=_("conference")
    )
    participant = models.ForeignKey(
        Participant,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="events",
        verbose_name=_("participant"),
    )
    kind = models.CharField(_("kind"), max_length=32, choices=Kind.choices)
    created_at = models.DateTimeField(_("time"), db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("done by"),
    )
    details = models.JSONField(_("details"), default=dict, blank=True)

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["conference", "created_at"], name="event_conference_time_idx")]

    def __str__(self):
        return f"{self.get_kind_display()} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class Recording(models.Model):
    """One recording of a room: written by Asterisk, fetched by the worker, stored through Django's storage."""

    class State(models.TextChoices):
        RECORDING = "recording", _("recording")
        FINISHED = "finished", _("finished, being fetched")
        STORED = "stored", _("stored")
        FAILED = "failed", _("failed")
        PURGED = "purged", _("deleted after its retention")

    conference = models.ForeignKey(
        Conference, on_delete=models.CASCADE, related_name="recordings", verbose_name=_("conference")
    )
    meeting = models.ForeignKey(
        Meeting, on_delete=models.SET_NULL, null=True, blank=True, related_name="recordings", verbose_name=_("meeting")
    )
    # The recording's name on Asterisk (unique there: ifExists=fail).
    name = models.CharField(_("name on Asterisk"), max_length=200, unique=True)
    format = models.CharField(_("format"), max_length=16, default="wav")
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.RECORDING)
    started_at = models.DateTimeField(_("started at"))
    stopped_at = models.DateTimeField(_("stopped at"), null=True, blank=True)
    duration = models.FloatField(_("duration (seconds)"), null=True, blank=True)
    size = models.PositiveBigIntegerField(_("size (bytes)"), null=True, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("started by"),
    )
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("stopped by"),
    )
    file = models.FileField(_("file"), upload_to="recordings/%Y/%m/", max_length=255, blank=True)
    error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("recording")
        verbose_name_plural = _("recordings")
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conference"], condition=Q(state="recording"), name="recording_one_live_per_conference"
            ),
        ]

    def __str__(self):
        return f"{self.conference_id}: {self.name}"


SOUND_NAME = RegexValidator(r"^[A-Za-z0-9_/-]+$", _("An Asterisk sound name, e.g. conf-now-recording."))


class Sound(models.Model):
    """A sound moderators may play to a room of the server (``play``): one already on the PBX."""

    server = models.ForeignKey(
        AsteriskServer, on_delete=models.CASCADE, related_name="sounds", verbose_name=_("server")
    )
    name = models.SlugField(_("name"), max_length=64, help_text=_("What the page sends; letters, digits, - and _."))
    label = models.CharField(_("label"), max_length=80, help_text=_("What moderators see in the list."))
    sound = models.CharField(
        _("Asterisk sound"),
        max_length=128,
        validators=[SOUND_NAME],
        help_text=_("A sound on the PBX, as Playback() names it: conf-now-recording, custom/welcome."),
    )

    class Meta:
        verbose_name = _("sound")
        verbose_name_plural = _("sounds")
        ordering = ["server", "label"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="sound_name_unique_per_server")]

    def __str__(self):
        return self.label


class Invite(models.Model):
    """A call the worker placed to bring a number into a room (a moderator's ``invite``)."""

    class Status(models.TextChoices):
        DIALING = "dialing", _("dialing")
        RINGING = "ringing", _("ringing")
        ANSWERED = "answered", _("answered")
        BUSY = "busy", _("busy")
        NO_ANSWER = "no_answer", _("no answer")
        FAILED = "failed", _("failed")
        CANCELLED = "cancelled", _("cancelled")

    OPEN = (Status.DIALING, Status.RINGING)

    conference = models.ForeignKey(
        Conference, on_delete=models.CASCADE, related_name="invites", verbose_name=_("conference")
    )
    number = models.CharField(_("number"), max_length=32)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.DIALING)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("invited by"),
    )
    participant = models.ForeignKey(
        Participant,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("participant"),
    )
    # The channel the worker created (its id is the worker's choice: how its events are told apart).
    channel_id = models.CharField(_("channel"), max_length=64, unique=True)
    cause = models.SmallIntegerField(_("hangup cause"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), db_index=True)
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)

    class Meta:
        verbose_name = _("invite")
        verbose_name_plural = _("invites")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["conference", "status"]), models.Index(fields=["actor", "created_at"])]

    def __str__(self):
        return f"{self.number} ({self.status})"


# --- integrations: API tokens and webhooks (issue 18) ---------------------------------------


def room_scope_problem(every_room, rooms):
    """Why a token's or a webhook's rooms cannot be so (a message for the form), or ``None``."""
    if every_room and rooms:
        return _("Either every room or the rooms ticked, not both.")
    if not every_room and not rooms:
        return _("Tick the rooms, or every room.")
    return None


class ApiToken(models.Model):
    """A key a program uses instead of a login: shown once, kept only as its SHA-256.

    What a token may do is the owner's rights narrowed by its scope: its rooms (none listed: every room
    the owner may see) and read-only or moderate. It never grants what the owner lacks (conferences/tokens.py).
    """

    class Scope(models.TextChoices):
        READ = "read", _("read only")
        MODERATE = "moderate", _("read and moderate")

    # The first characters of every token: a token pasted where it should not be is easy to find (and to scan for).
    PREFIX = "cfp_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens", verbose_name=_("owner")
    )
    name = models.CharField(_("name"), max_length=64, help_text=_("Shown in the history beside the owner's name."))
    key_hash = models.CharField(_("key hash"), max_length=64, unique=True, editable=False)
    key_hint = models.CharField(_("key starts with"), max_length=16, editable=False)
    scope = models.CharField(_("scope"), max_length=16, choices=Scope.choices, default=Scope.READ)
    every_room = models.BooleanField(
        _("every room"),
        default=True,
        help_text=_("Every room the owner may see, now and later, instead of the rooms listed."),
    )
    # Not "none listed means every room": a listed room deleted would widen the token to all of them.
    conferences = models.ManyToManyField(
        Conference,
        blank=True,
        related_name="+",
        verbose_name=_("rooms"),
        help_text=_("The rooms it may reach (of those the owner may see), unless every room is ticked."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"))
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked = models.BooleanField(_("revoked"), default=False)

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.name} ({self.key_hint}…)"


class Webhook(models.Model):
    """Where room events are posted for another system, signed with the secret (conferences/webhooks.py)."""

    name = models.CharField(_("name"), max_length=64)
    url = models.URLField(_("URL"), max_length=500)
    secret = models.CharField(
        _("secret"), max_length=128, help_text=_("Signs every body (HMAC-SHA256); the receiver checks it.")
    )
    events = models.JSONField(
        _("events"), default=list, blank=True, help_text=_("The event types to send; empty for every type.")
    )
    every_room = models.BooleanField(
        _("every room"), default=True, help_text=_("Every room, now and later, instead of the rooms listed.")
    )
    conferences = models.ManyToManyField(
        Conference,
        blank=True,
        related_name="+",
        verbose_name=_("rooms"),
        help_text=_("The rooms whose events it gets, unless every room is ticked."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("webhook")
        verbose_name_plural = _("webhooks")
        ordering = ["name", "id"]

    def __str__(self):
        return self.name


class WebhookDelivery(models.Model):
    """One event for one webhook: kept until it is delivered or given up on, then as the delivery log."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        DELIVERED = "delivered", _("delivered")
        FAILED = "failed", _("failed")

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("webhook"))
    event_id = models.CharField(_("delivery id"), max_length=64, unique=True, editable=False)
    event_type = models.CharField(_("event"), max_length=64)
    conference = models.ForeignKey(
        Conference, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", verbose_name=_("conference")
    )
    payload = models.JSONField(_("body"), default=dict)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    created_at = models.DateTimeField(_("created"), db_index=True)
    next_attempt_at = models.DateTimeField(_("next attempt"), db_index=True)
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(_("last answer"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx")]

    def __str__(self):
        return f"{self.event_type} → {self.webhook}"
