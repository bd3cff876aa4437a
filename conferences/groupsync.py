"""Django groups that follow an outside source's group names: the directory's (conferences/directory.py) and
the single sign-on provider's (conferences/oidc.py), the same way for both."""

import logging

from django.contrib.auth.models import Group

logger = logging.getLogger(__name__)

GROUP_NAME_LENGTH = Group._meta.get_field("name").max_length


def mirror_groups(user, names, mirror, *, source):
    """Make ``user``'s groups follow ``names``; return whether they changed.

    ``mirror``: True (every group follows the source), a list (only these groups follow it, the others stay
    as staff set them) or false (nothing changes). Changes are m2m adds and removes, not a rewrite of the
    table, so conferences/signals.py tells the user's open sockets. A name no Django group can hold is
    skipped (one hostile entry must not stop the whole sync).
    """
    if not mirror:
        return False
    wanted = set()
    for name in filter(None, names):
        if len(name) <= GROUP_NAME_LENGTH:
            wanted.add(name)
        else:
            logger.warning("%s: %s: a group name of %d characters skipped", source, user.get_username(), len(name))
    current = set(user.groups.values_list("name", flat=True))
    if mirror is True:
        target = wanted
    else:
        managed = set(mirror)
        target = (wanted & managed) | (current - managed)
    removed, added = current - target, target - current
    if removed:
        user.groups.remove(*Group.objects.filter(name__in=removed))
    if added:
        user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in sorted(added)))
    if removed or added:
        logger.info(
            "%s: %s: groups %s added, %s removed",
            source,
            user.get_username(),
            sorted(added) or "none",
            sorted(removed) or "none",
        )
    return bool(removed or added)
