"""Pages: login, logout, the room list and the room page answer as the rules say."""

import pytest
from django.urls import reverse

from conferences.models import ConferenceAccess

pytestmark = pytest.mark.django_db


def test_anonymous_is_sent_to_login(client, conference):
    for url in ("/", "/conferences/sales/", "/conferences/nope/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_login_and_logout(client, make_user):
    make_user("alice")
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b"csrfmiddlewaretoken" in page.content
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-Tr0ub4dor"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    # Logout is a POST (a GET link could be triggered by another site).
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_wrong_password_stays_on_login(client, make_user):
    make_user("alice")
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"didn" in response.content


def test_list_shows_only_permitted_rooms_with_counts(
    client, conference, make_conference, make_user, grant, make_participant
):
    hidden = make_conference("901", name="Board meeting", slug="board")
    user = make_user()
    grant(conference, user=user)
    make_participant(conference, caller_name="Bob")
    make_participant(hidden)
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    assert list(response.context["conferences"]) == [conference]
    assert response.context["conferences"][0].present_count == 1
    assert b"Sales" in response.content
    assert b"Board meeting" not in response.content


def test_room_page_for_viewer_moderator_stranger_and_missing(client, conference, make_user, grant):
    viewer, moderator, stranger = make_user(), make_user(), make_user()
    grant(conference, user=viewer)
    grant(conference, user=moderator, role=ConferenceAccess.Role.MODERATOR)
    url = reverse("conference-detail", kwargs={"slug": "sales"})

    client.force_login(viewer)
    response = client.get(url)
    assert response.status_code == 200 and response.context["can_moderate"] is False

    client.force_login(moderator)
    response = client.get(url)
    assert response.status_code == 200 and response.context["can_moderate"] is True

    client.force_login(stranger)
    assert client.get(url).status_code == 403
    assert client.get("/conferences/no-such-room/").status_code == 404


def test_room_page_for_superuser(client, conference, superuser):
    client.force_login(superuser)
    assert client.get("/conferences/sales/").status_code == 200


def test_room_page_escapes_caller_names(client, conference, superuser, make_participant):
    make_participant(conference, caller_name='<script>alert("x")</script>', caller_number="<b>1</b>")
    client.force_login(superuser)
    content = client.get("/conferences/sales/").content.decode()
    assert "<script>alert" not in content
    assert "&lt;script&gt;alert" in content
    assert "<b>1</b>" not in content


def test_russian_translation_is_served(client, superuser):
    client.force_login(superuser)
    response = client.get("/", headers={"accept-language": "ru"})
    assert response.status_code == 200
    assert response.headers["Content-Language"] == "ru"
    assert "Конференц" in response.content.decode()


def test_security_headers(client, superuser):
    client.force_login(superuser)
    response = client.get("/")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
