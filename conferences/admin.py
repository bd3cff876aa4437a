import json
import secrets

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from conferences import access, moderation, services, tokens, twofactor, webhooks
from conferences.forms import RoomScopeForm
from conferences.models import (
    ApiToken,
    AsteriskServer,
    Conference,
    ConferenceAccess,
    ConferenceEvent,
    Invite,
    Participant,
    Recording,
    Sound,
    Webhook,
    WebhookDelivery,
    present_filter,
)


def _moderate(request, action, conference, participant=None, **arguments):
    """Ask the room's worker to act, like the live page does; report the outcome as a message."""
    target = str(participant) if participant else str(conference)
    if not access.can_moderate(request.user, conference):
        messages.error(request, gettext("%(target)s: you are not a moderator of this room.") % {"target": target})
        return
    ok, error = async_to_sync(moderation.request)(
        server_id=conference.server_id,
        conference_id=conference.pk,
        action=action,
        participant_id=participant.pk if participant else None,
        actor_id=request.user.pk,
        **arguments,
    )
    if ok:
        messages.success(request, gettext("%(target)s: done.") % {"target": target})
    else:
        messages.error(request, gettext("%(target)s: %(error)s") % {"target": target, "error": error})


def _room_action(action, description):
    def run(modeladmin, request, queryset):
        for conference in queryset.select_related("server"):
            _moderate(request, action, conference)

    run.__name__ = action
    return admin.action(description=description)(run)


def _participant_action(action, description):
    def run(modeladmin, request, queryset):
        for participant in queryset.select_related("conference"):
            _moderate(request, action, participant.conference, participant)

    run.__name__ = action
    return admin.action(description=description)(run)


class InviteForm(forms.Form):
    number = forms.CharField(label=_("Number"), max_length=32, help_text=_("Digits, * # and + only."))


@admin.action(description=_("Invite a number into the selected room"))
def invite(modeladmin, request, queryset):
    """The page's invite, from the admin: a form for the number, then the same request to the worker."""
    rooms = list(queryset.select_related("server")[:2])
    if len(rooms) != 1:
        messages.error(request, gettext("Select one room to invite a number into."))
        return None
    form = InviteForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        _moderate(request, "invite", rooms[0], number=form.cleaned_data["number"].strip())
        return None
    return TemplateResponse(
        request,
        "admin/conferences/invite.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": gettext("Invite a number into %(room)s") % {"room": rooms[0]},
            "form": form,
            "room": rooms[0],
            "opts": modeladmin.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        },
    )


class AsteriskServerForm(forms.ModelForm):
    """Server form whose password field is write-only.

    The stored password is never rendered back; leaving the field empty on a
    change keeps it.
    """

    password = forms.CharField(
        label=_("ARI password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Write-only. Leave empty to keep the current password."),
    )

    class Meta:
        model = AsteriskServer
        fields = ["name", "ari_url", "username", "password", "app_name", "enabled", "dial_template", "invite_pattern"]

    def clean_password(self):
        password = self.cleaned_data.get("password")
        if password:
            return password
        if self.instance.pk and self.instance.password:
            return self.instance.password
        raise forms.ValidationError(_("Enter the ARI password."))


class SoundInline(admin.TabularInline):
    model = Sound
    extra = 1
    fields = ["label", "name", "sound"]
    prepopulated_fields = {"name": ["label"]}


@admin.register(AsteriskServer)
class AsteriskServerAdmin(admin.ModelAdmin):
    form = AsteriskServerForm
    inlines = [SoundInline]
    list_display = ["name", "ari_url", "username", "app_name", "enabled", "connected", "status_since"]
    list_filter = ["enabled", "connected"]
    search_fields = ["name", "ari_url", "username", "app_name"]
    readonly_fields = ["connected", "status_since", "last_seen_at", "last_error"]
    fieldsets = [
        (None, {"fields": ["name", "ari_url", "username", "password", "app_name", "enabled"]}),
        (_("Invites by number"), {"fields": ["dial_template", "invite_pattern"]}),
        (_("Link status"), {"fields": ["connected", "status_since", "last_seen_at", "last_error"]}),
    ]


class SafeAutocompleteSelect(AutocompleteSelect):
    """Django's autocomplete widget, rendering a submitted value that is no id of its model as no choice.

    Django 5.2's AutocompleteMixin.optgroups filters the model by the submitted values as they are: a user
    id that is not a number raised while the form with its error was rendered, a 500 instead of the
    form's "select a valid choice" (tests/test_hardening_admin_tokens.py shows both).
    """

    def optgroups(self, name, value, attr=None):
        target = self.field.remote_field.model._meta.pk
        ids = []
        for item in value:
            try:
                target.to_python(item)
            except ValidationError:
                continue
            ids.append(item)
        return super().optgroups(name, ids, attr)


class SafeAutocompleteMixin:
    """autocomplete_fields with SafeAutocompleteSelect."""

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if "widget" not in kwargs and db_field.name in self.get_autocomplete_fields(request):
            kwargs["widget"] = SafeAutocompleteSelect(db_field, self.admin_site, using=kwargs.get("using"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ConferenceAccessInline(SafeAutocompleteMixin, admin.TabularInline):
    model = ConferenceAccess
    extra = 1
    autocomplete_fields = ["user", "group"]


@admin.register(Conference)
class ConferenceAdmin(admin.ModelAdmin):
    list_display = ["name", "number", "server", "slug", "locked", "lobby", "present_count", "max_participants"]
    list_filter = ["server", "locked", "lobby", "wait_for_leader"]
    search_fields = ["name", "number", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["seq", "created_at"]
    inlines = [ConferenceAccessInline]
    actions = [
        _room_action("lock", _("Lock the selected rooms")),
        _room_action("unlock", _("Unlock the selected rooms")),
        _room_action("mute_all", _("Mute everyone but admins")),
        _room_action("unmute_all", _("Unmute everyone")),
        _room_action("admit_all", _("Admit everyone waiting in the lobby")),
        invite,
    ]

    def save_model(self, request, obj, form, change):
        """A change goes through the services (audited, broadcast to open pages); a new room is a plain save."""
        if not change:
            super().save_model(request, obj, form, change)
            return
        configurable = services.configurable_fields()
        changes = {field: getattr(obj, field) for field in form.changed_data if field in configurable}
        if changes:
            services.conference_update(conference_id=obj.pk, actor_id=request.user.pk, **changes)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("server")
            .annotate(_present_count=Count("participants", filter=present_filter("participants")))
        )

    @admin.display(description=_("present"), ordering="_present_count")
    def present_count(self, obj):
        return obj._present_count


class ApiTokenForm(RoomScopeForm, forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["user", "name", "scope", "every_room", "conferences", "expires_at", "revoked"]

    requester = None  # the admin's user, set by ApiTokenAdmin.get_form

    def clean_user(self):
        user = self.cleaned_data["user"]
        # A token acts as its owner: only a superuser may make one for someone else (a staff member with
        # the add permission would otherwise act as anyone, a superuser included).
        if self.requester is not None and not self.requester.is_superuser and user != self.requester:
            raise forms.ValidationError(_("Only a superuser makes tokens for other users."))
        if not self.instance.pk and not twofactor.may_own_token(user):
            raise forms.ValidationError(twofactor.OWNER_REFUSED_MESSAGE)
        return user

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if not self.instance.pk or "expires_at" in self.changed_data:
            problem = tokens.expiry_problem(expires_at)
            if problem:
                raise forms.ValidationError(problem)
        return expires_at


@admin.register(ApiToken)
class ApiTokenAdmin(SafeAutocompleteMixin, admin.ModelAdmin):
    """Tokens of any user: made here, the plain token is shown once, on the page after saving."""

    form = ApiTokenForm
    list_display = ("name", "user", "key_hint", "scope", "expires_at", "last_used_at", "revoked")
    list_filter = ("scope", "revoked")
    search_fields = ("name", "user__username", "key_hint")
    autocomplete_fields = ("user",)
    filter_horizontal = ("conferences",)
    readonly_fields = ("key_hint", "created_at", "last_used_at")
    actions = ["revoke"]

    def get_changeform_initial_data(self, request):
        return {"expires_at": timezone.now() + tokens.DEFAULT_LIFETIME, **super().get_changeform_initial_data(request)}

    def get_readonly_fields(self, request, obj=None):
        # The owner is fixed once made: moving a token to another user would hand over what it was made for.
        # A revoked token stays revoked (one leaked, or revoked by the directory sync, must not come back).
        if obj is None:
            return self.readonly_fields
        return (*self.readonly_fields, "user", *(("revoked",) if obj.revoked else ()))

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.requester = request.user
        return form

    def get_queryset(self, request):
        # Staff who are not superusers see and change their own tokens only (a scope widened or an expiry
        # pushed back on someone else's token would act as that user).
        tokens_ = super().get_queryset(request)
        return tokens_ if request.user.is_superuser else tokens_.filter(user=request.user)

    def save_model(self, request, obj, form, change):
        if not change:
            request._new_api_token = tokens.new_key(obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        raw = getattr(request, "_new_api_token", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "token": obj, "raw": raw}
        response = TemplateResponse(request, "admin/conferences/apitoken/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description=_("Revoke the selected tokens"))
    def revoke(self, request, queryset):
        count = 0
        for token in queryset.filter(revoked=False):  # saved one by one: their streams hear of it (signals.py)
            token.revoked = True
            token.save(update_fields=["revoked"])
            count += 1
        messages.success(request, gettext("%(count)s token(s) revoked.") % {"count": count})


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the worker and the services: staff look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Participant)
class ParticipantAdmin(ReadOnlyAdmin):
    actions = [
        _participant_action("mute", _("Mute the selected participants")),
        _participant_action("unmute", _("Unmute the selected participants")),
        _participant_action("kick", _("Kick the selected participants")),
        _participant_action("lower_hand", _("Lower the hands of the selected participants")),
        _participant_action("admit", _("Admit the selected waiting callers")),
        _participant_action("deny", _("Turn the selected waiting callers away")),
    ]
    list_display = [
        "caller_name",
        "caller_number",
        "conference",
        "status",
        "waiting_for",
        "role",
        "joined_at",
        "left_at",
        "left_reason",
        "muted",
        "mute_source",
        "hand_raised",
        "talking",
        "channel_id",
    ]
    list_filter = [
        ("left_at", admin.EmptyFieldListFilter),
        "conference",
        "status",
        "role",
        "left_reason",
        "muted",
        "mute_source",
        "hand_raised",
    ]
    search_fields = ["caller_name", "caller_number", "channel_id", "conference__name", "conference__number"]
    list_select_related = ["conference"]
    date_hierarchy = "joined_at"


@admin.register(Recording)
class RecordingAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "conference", "state", "duration", "size", "started_by", "stopped_at"]
    list_filter = ["state", "conference"]
    list_select_related = ["conference", "started_by"]
    date_hierarchy = "started_at"


@admin.register(Invite)
class InviteAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "conference", "number", "status", "actor", "cause", "ended_at"]
    list_filter = ["status", "conference"]
    search_fields = ["number", "conference__name", "actor__username"]
    list_select_related = ["conference", "actor"]
    date_hierarchy = "created_at"


@admin.register(ConferenceEvent)
class ConferenceEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "conference", "kind", "participant", "actor"]
    list_filter = ["kind", "conference"]
    search_fields = ["conference__name", "participant__caller_name", "participant__caller_number", "actor__username"]
    list_select_related = ["conference", "participant", "actor"]
    date_hierarchy = "created_at"


# --- webhooks (conferences/webhooks.py) ------------------------------------------------------------

# The labels of the event types a webhook may choose (the admin's checkboxes).
WEBHOOK_EVENT_LABELS = {
    "participant.joined": _("a caller joined (or started waiting)"),
    "participant.updated": _("a caller changed: muted, hand, admitted, music"),
    "participant.left": _("a caller left"),
    "participant.talking": _("a caller started or stopped talking (many; never sent unless chosen)"),
    "conference.updated": _("the room changed: counts, lock, lobby, recording"),
    "invite.updated": _("an invitation by number changed"),
    "recording.finished": _("a recording is stored"),
    "asterisk.status": _("the link to Asterisk went down or came back"),
}


def _http_url(value):
    problem = webhooks.url_problem(value)
    if problem == webhooks.NOT_HTTP:
        raise forms.ValidationError(_("Enter an http:// or https:// URL."))
    if problem is not None:
        raise forms.ValidationError(
            _("Not this address: the host itself, a link-local (cloud metadata) address or no host at all.")
        )


class WebhookForm(RoomScopeForm, forms.ModelForm):
    """The events as checkboxes; the secret write-only (empty keeps it, or makes one for a new webhook)."""

    url = forms.URLField(
        label=_("URL"),
        max_length=500,
        assume_scheme="https",
        validators=[_http_url],
        help_text=_("Where events are posted (http or https)."),
    )
    events = forms.MultipleChoiceField(
        label=_("events"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None chosen: every event but talking."),
    )
    secret = forms.CharField(
        label=_("secret"),
        required=False,
        strip=False,
        max_length=128,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_(
            "Signs every body (HMAC-SHA256, docs/webhooks.md). Write-only: leave empty to keep the current "
            "one; for a new webhook, empty makes a random secret, shown once."
        ),
    )

    class Meta:
        model = Webhook
        fields = ["name", "url", "enabled", "events", "every_room", "conferences", "secret"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["events"].choices = [
            (kind, f"{kind}: {WEBHOOK_EVENT_LABELS[kind]}") for kind in webhooks.EVENT_TYPES
        ]
        self.generated_secret = None

    def clean_secret(self):
        secret = self.cleaned_data.get("secret")
        if secret:
            if len(secret) < 16:
                raise forms.ValidationError(_("Use at least 16 characters."))
            return secret
        if self.instance.pk and self.instance.secret:
            return self.instance.secret
        self.generated_secret = secrets.token_urlsafe(32)
        return self.generated_secret


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    change_form_template = "admin/conferences/webhook/change_form.html"
    list_display = ["name", "url", "enabled", "event_list", "room_list", "secret_hint", "log"]
    list_filter = ["enabled"]
    search_fields = ["name", "url"]
    filter_horizontal = ["conferences"]
    readonly_fields = ["secret_hint", "created_at"]
    actions = ["send_test"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("conferences")

    @admin.display(description=_("events"))
    def event_list(self, obj):
        return ", ".join(obj.events) if obj.events else gettext("every event but talking")

    @admin.display(description=_("rooms"))
    def room_list(self, obj):
        return gettext("every room") if obj.every_room else ", ".join(str(room) for room in obj.conferences.all())

    @admin.display(description=_("secret"))
    def secret_hint(self, obj):
        return webhooks.secret_fingerprint(obj.secret) if obj.secret else "—"

    @admin.display(description=_("deliveries"))
    def log(self, obj):
        # A link, not counts: counting a week of deliveries per webhook on every list would cost more than it tells.
        url = reverse("admin:conferences_webhookdelivery_changelist")
        return format_html('<a href="{}?webhook__id__exact={}">{}</a>', url, obj.pk, gettext("delivery log"))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if form.generated_secret:
            messages.warning(
                request,
                gettext("The secret of %(webhook)s is %(secret)s. It is shown only now: give it to the receiver.")
                % {"webhook": obj.name, "secret": form.generated_secret},
            )

    def response_change(self, request, obj):
        if "_send_test" in request.POST:
            webhooks.send_test(obj)
            messages.success(request, gettext("%(webhook)s: a test event is on its way.") % {"webhook": obj.name})
        return super().response_change(request, obj)

    @admin.action(description=_("Send a test event to the selected webhooks"), permissions=["change"])
    def send_test(self, request, queryset):
        for webhook in queryset:
            webhooks.send_test(webhook)
        messages.success(request, gettext("%(count)s test event(s) on their way.") % {"count": len(queryset)})


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """The delivery log: what was sent where, how often, and the last answer."""

    list_display = [
        "created_at",
        "webhook",
        "event_type",
        "conference",
        "status",
        "attempts",
        "last_status_code",
        "short_error",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", "event_type", "webhook"]
    search_fields = ["event_id", "webhook__name"]
    list_select_related = ["webhook", "conference"]
    date_hierarchy = "created_at"
    fields = [
        "event_id",
        "webhook",
        "event_type",
        "conference",
        "status",
        "attempts",
        "created_at",
        "next_attempt_at",
        "delivered_at",
        "last_status_code",
        "last_error",
        "body",
    ]
    readonly_fields = fields
    actions = ["retry"]

    @admin.display(description=_("last error"))
    def short_error(self, obj):
        return obj.last_error[:80] + ("…" if len(obj.last_error) > 80 else "")

    @admin.display(description=_("body"))
    def body(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False))

    def has_retry_permission(self, request):
        return request.user.has_perm("conferences.change_webhook")

    @admin.action(description=_("Retry the selected deliveries now"), permissions=["retry"])
    def retry(self, request, queryset):
        count = webhooks.retry_now(queryset)
        messages.success(request, gettext("%(count)s delivery(ies) will be sent again now.") % {"count": count})
