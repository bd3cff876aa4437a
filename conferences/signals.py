"""Grant and session changes that open sockets must hear about.

Access rows and users change through the admin (plain model saves), not
through the services; these receivers tell the affected sockets after the
transaction commits, and the sockets re-check the rules in conferences.access.
"""

from functools import partial

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from conferences import broadcast
from conferences.models import ApiToken, ConferenceAccess, Webhook

User = get_user_model()


@receiver([post_save, post_delete], sender=ConferenceAccess)
def _access_row_changed(sender, instance, **kwargs):
    # The room's sockets re-check (a grant may be gone); the grantees' room lists
    # re-read (a room may have appeared for them).
    transaction.on_commit(partial(broadcast.send_room_access_changed, instance.conference_id))
    if instance.user_id:
        user_ids = [instance.user_id]
    else:
        user_ids = list(User.objects.filter(groups=instance.group_id).values_list("pk", flat=True))
    for user_id in user_ids:
        transaction.on_commit(partial(broadcast.send_user_access_changed, user_id))


@receiver([post_save, post_delete], sender=User)
def _user_changed(sender, instance, update_fields=None, **kwargs):
    # is_active, is_superuser or the user itself may have changed. Not for a login's own save of
    # last_login: every open socket of the user would re-check and resend its snapshot.
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    transaction.on_commit(partial(broadcast.send_user_access_changed, instance.pk))


@receiver(m2m_changed, sender=User.groups.through)
def _groups_changed(sender, instance, action, reverse, pk_set, **kwargs):
    # On clear, who was in the group is known only before.
    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    if reverse:  # group.user_set changed: instance is the group
        user_ids = pk_set or set(instance.user_set.values_list("pk", flat=True))
    else:
        user_ids = {instance.pk}
    for user_id in user_ids:
        transaction.on_commit(partial(broadcast.send_user_access_changed, user_id))


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        transaction.on_commit(partial(broadcast.send_session_ended, session_key))


@receiver([post_save, post_delete], sender=ApiToken)
def _token_changed(sender, instance, update_fields=None, **kwargs):
    # A token revoked, shortened or narrowed: its event streams re-check now, not at their next periodic check.
    if update_fields is not None and set(update_fields) <= {"last_used_at"}:
        return
    transaction.on_commit(partial(broadcast.send_user_access_changed, instance.user_id))


@receiver(m2m_changed, sender=ApiToken.conferences.through)
def _token_rooms_changed(sender, instance, action, reverse, pk_set, **kwargs):
    if action not in ("post_add", "post_remove", "post_clear") or reverse:
        return  # a room's side (reverse) changes only when a room is deleted: its sockets close anyway
    if action == "post_add":
        _limited_to_its_rooms(instance)
    transaction.on_commit(partial(broadcast.send_user_access_changed, instance.user_id))


@receiver(m2m_changed, sender=Webhook.conferences.through)
def _webhook_rooms_changed(sender, instance, action, reverse, **kwargs):
    if action == "post_add" and not reverse:
        _limited_to_its_rooms(instance)


def _limited_to_its_rooms(instance):
    # Rooms listed mean only those rooms (and, once all of them are deleted, none): never "every room" beside
    # a list, which a deleted room would turn into every room.
    if instance.every_room:
        type(instance).objects.filter(pk=instance.pk).update(every_room=False)
        instance.every_room = False
