from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, render

from conferences import access
from conferences.models import Conference


@login_required
def conference_list(request):
    """The rooms the user may see, with how many people are in each."""
    conferences = (
        access.conferences_visible_to(request.user)
        .select_related("server")
        .annotate(present_count=Count("participants", filter=Q(participants__left_at__isnull=True)))
        .order_by("name")
    )
    return render(request, "conferences/conference_list.html", {"conferences": conferences})


@login_required
def conference_detail(request, slug):
    """A room's page: 404 when there is no such room, 403 without access."""
    conference = get_object_or_404(Conference.objects.select_related("server"), slug=slug)
    role = access.conference_role(request.user, conference)
    if role is None:
        raise PermissionDenied
    participants = conference.participants.present()
    return render(
        request,
        "conferences/conference_detail.html",
        {
            "conference": conference,
            "participants": participants,
            "can_moderate": role == access.MODERATOR,
        },
    )
