"""The REST API answers odd input with a clean 4xx, not a 500 and a logged traceback (an attacker's review)."""

import pytest
from django.test import AsyncClient

from conferences import tokens
from conferences.models import ApiToken, ConferenceAccess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _own_cache_and_layer(own_cache, fresh_layer):
    """Throttle counts of this test's own; a fresh in-memory channel layer."""


@pytest.mark.parametrize(
    "path",
    ["/rooms/a%00b", "/rooms/a%00b/history", "/rooms/a%00b/recordings/1/download"],
)
async def test_a_nul_in_the_room_slug_is_a_404_not_a_500(conference, make_user, grant, path):
    from asgiref.sync import sync_to_async

    owner = await sync_to_async(make_user)("integrator")
    await sync_to_async(grant)(conference, user=owner, role=ConferenceAccess.Role.MODERATOR)
    _token, raw = await sync_to_async(tokens.create)(user=owner, name="crm", scope=ApiToken.Scope.READ)
    response = await AsyncClient().get(f"/api/v1{path}", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 404, response.content
