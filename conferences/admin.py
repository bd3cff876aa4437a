from django import forms
from django.contrib import admin
from django.db.models import Count, Q
from django.utils.translation import gettext_lazy as _

from conferences.models import AsteriskServer, Conference, ConferenceAccess, ConferenceEvent, Participant


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
        fields = ["name", "ari_url", "username", "password", "app_name", "enabled"]

    def clean_password(self):
        password = self.cleaned_data.get("password")
        if password:
            return password
        if self.instance.pk and self.instance.password:
            return self.instance.password
        raise forms.ValidationError(_("Enter the ARI password."))


@admin.register(AsteriskServer)
class AsteriskServerAdmin(admin.ModelAdmin):
    form = AsteriskServerForm
    list_display = ["name", "ari_url", "username", "app_name", "enabled", "connected", "status_since"]
    list_filter = ["enabled", "connected"]
    search_fields = ["name", "ari_url", "username", "app_name"]
    readonly_fields = ["connected", "status_since", "last_seen_at", "last_error"]
    fieldsets = [
        (None, {"fields": ["name", "ari_url", "username", "password", "app_name", "enabled"]}),
        (_("Link status"), {"fields": ["connected", "status_since", "last_seen_at", "last_error"]}),
    ]


class ConferenceAccessInline(admin.TabularInline):
    model = ConferenceAccess
    extra = 1
    autocomplete_fields = ["user", "group"]


@admin.register(Conference)
class ConferenceAdmin(admin.ModelAdmin):
    list_display = ["name", "number", "server", "slug", "locked", "present_count", "max_participants"]
    list_filter = ["server", "locked"]
    search_fields = ["name", "number", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["seq", "created_at"]
    inlines = [ConferenceAccessInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("server")
            .annotate(_present_count=Count("participants", filter=Q(participants__left_at__isnull=True)))
        )

    @admin.display(description=_("present"), ordering="_present_count")
    def present_count(self, obj):
        return obj._present_count


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
    list_display = [
        "caller_name",
        "caller_number",
        "conference",
        "role",
        "joined_at",
        "left_at",
        "left_reason",
        "muted",
        "talking",
    ]
    list_filter = [("left_at", admin.EmptyFieldListFilter), "conference", "role", "left_reason", "muted"]
    search_fields = ["caller_name", "caller_number", "channel_id", "conference__name", "conference__number"]
    list_select_related = ["conference"]
    date_hierarchy = "joined_at"


@admin.register(ConferenceEvent)
class ConferenceEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "conference", "kind", "participant", "actor"]
    list_filter = ["kind", "conference"]
    search_fields = ["conference__name", "participant__caller_name", "participant__caller_number", "actor__username"]
    list_select_related = ["conference", "participant", "actor"]
    date_hierarchy = "created_at"
