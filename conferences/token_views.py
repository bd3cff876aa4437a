"""Users' own API tokens: make one (shown once), see when each was last used, revoke one (issue 18)."""

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from conferences import access, tokens, twofactor
from conferences.forms import RoomScopeForm
from conferences.models import ApiToken, Conference

LIFETIMES = (7, 30, 90, 365)  # days a user may choose


class TokenForm(RoomScopeForm, forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), max_length=64, help_text=gettext_lazy("What it is for."))
    scope = forms.ChoiceField(label=gettext_lazy("Scope"), choices=ApiToken.Scope.choices)
    days = forms.TypedChoiceField(
        label=gettext_lazy("Expires in"),
        coerce=int,
        initial=90,
        choices=[(days, days) for days in LIFETIMES],  # labelled per request (__init__)
    )
    every_room = forms.BooleanField(
        label=gettext_lazy("Every room you may see, now and later"), required=False, initial=True
    )
    conferences = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Or only these rooms"),
        queryset=Conference.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["days"].choices = [(days, _("%(days)s days") % {"days": days}) for days in LIFETIMES]
        # Only rooms the user may see: a token never widens its owner's rights.
        self.fields["conferences"].queryset = access.conferences_visible_to(user).order_by("name")

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError(_("Give the token a name."))
        return name


@never_cache
@login_required
def token_list(request):
    """The user's tokens; a POST makes a new one and shows it, once."""
    created = None
    if request.method == "POST":
        form = TokenForm(request.POST, user=request.user)
        if not twofactor.may_own_token(request.user, request=request):
            form.add_error(None, twofactor.TOKEN_REFUSED_MESSAGE)
        if form.is_valid():
            data = form.cleaned_data
            token, created = tokens.create(
                user=request.user,
                name=data["name"],
                scope=data["scope"],
                expires_at=timezone.now() + timedelta(days=data["days"]),
                conferences=data["conferences"],
                every_room=data["every_room"],
            )
            form = TokenForm(user=request.user)
    else:
        form = TokenForm(user=request.user)
    own = ApiToken.objects.filter(user=request.user).prefetch_related("conferences")
    return render(
        request,
        "conferences/tokens.html",
        {"form": form, "tokens": own, "created": created, "now": timezone.now()},
    )


@require_POST
@login_required
def token_revoke(request, pk):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)  # someone else's: 404, as if there were none
    if not token.revoked:
        token.revoked = True
        token.save(update_fields=["revoked"])
        messages.success(request, _("The token “%(name)s” is revoked.") % {"name": token.name})
    return redirect("api-tokens")
