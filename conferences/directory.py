"""Company directories (LDAP / Active Directory) as a way in, and the sync that keeps access to them.

django-auth-ldap does the login: it finds the account (LDAP_USER_SEARCH_BASE, LDAP_USER_FILTER),
binds as it with the password typed, creates or updates the Django user and mirrors its directory
groups into Django groups, so room access granted to a group applies at the next login. Settings:
conferencesite/env.py, ldap_settings. Rules this module adds:

- The directory is asked last: the login throttle (conferences/auth_backends.py) counts every
  attempt first, per username and per address, and local accounts are tried before it. A
  directory that is down or hangs costs a login at most its timeouts (LDAP_TIMEOUT) and answers
  as a wrong password does; the error is logged as an error, naming the server.
- Directory accounts are marked: their password field starts with ``DIRECTORY_PASSWORD_PREFIX``
  (an unusable password: they can only log in through the directory). A local account with the
  same name is never taken over by a directory login (a directory "admin" would become the local
  superuser), and the sync never touches a local account.
- An inactive account does not log in through the directory and its sessions are not honoured
  (django-auth-ldap's own get_user returns inactive users).
- The sync (``sync_directory``, ``manage.py ldap_sync``) re-reads every active directory account:
  its groups (mirrored the way a login mirrors them) and its staff/superuser flags are updated
  with ordinary ORM saves and m2m changes, so the signals of conferences/signals.py tell its open
  sockets, which re-check and close when access is gone; only what changed is written. An account
  that is gone from the directory, no longer matches the search (LDAP_DISABLED_FILTER is part of
  it) or carries Active Directory's "disabled" bit is disabled here: made inactive, its sessions
  deleted and its API tokens revoked. A directory that cannot be reached or searched changes
  nothing: the sync stops, logs why and reports the failure (it never takes an unanswered search
  for a missing account); so does a sync that would disable most accounts at once (a filter
  changed by mistake looks like that) until it is allowed by hand.
- The sync reads groups with django-auth-ldap's own group code on one shared connection (its
  private ``_LDAPUser`` attributes: the version is pinned, and tests/test_ldap.py covers them).
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial

import ldap
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.dispatch import receiver
from django.utils import timezone
from django.utils.crypto import get_random_string
from django_auth_ldap.backend import LDAPBackend, _LDAPUser, ldap_error, populate_user

from conferences import broadcast, groupsync, tokens

logger = logging.getLogger(__name__)

# Django's unusable passwords start with "!"; this one also says where the account comes from.
DIRECTORY_PASSWORD_PREFIX = "!directory$"
# Active Directory's userAccountControl: ACCOUNTDISABLE.
AD_ACCOUNT_DISABLED = 0x2


class DirectoryUnavailable(Exception):
    """The directory could not be reached, bound to or searched: nothing was changed."""


def is_directory_account(user):
    """Whether ``user`` came from the directory (and may only log in through it)."""
    return (user.password or "").startswith(DIRECTORY_PASSWORD_PREFIX)


def directory_accounts():
    """The users that came from the directory, as a queryset."""
    return get_user_model().objects.filter(password__startswith=DIRECTORY_PASSWORD_PREFIX)


def account_disabled(attrs):
    """Whether a directory entry's attributes say the account is disabled (Active Directory's bit 2)."""
    for value in (attrs or {}).get("userAccountControl", ()):
        try:
            if int(value) & AD_ACCOUNT_DISABLED:
                return True
        except (TypeError, ValueError):
            continue
    return False


def describe(exc):
    """One line for an LDAP error: python-ldap's ``desc`` and ``info``, not a dict's repr."""
    if isinstance(exc, ldap.TIMEOUT):
        return "no answer within LDAP_TIMEOUT (timed out)"
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    text = details.get("desc") or type(exc).__name__
    if details.get("info"):
        text = f"{text}: {details['info']}"
    return text


class DirectoryBackend(LDAPBackend):
    """django-auth-ldap's backend with the rules above; last in AUTHENTICATION_BACKENDS."""

    def authenticate_ldap_user(self, ldap_user, password):
        try:
            with transaction.atomic():
                user = super().authenticate_ldap_user(ldap_user, password)
        except DatabaseError as exc:  # a directory value the database cannot hold: refused, not a 500
            logger.error("directory: %s could not be stored (%s); login refused", ldap_user.dn, exc.__class__.__name__)
            return None
        if user is None:
            return None
        if not user.is_active:
            logger.info("directory: %s is inactive here; login refused", user.get_username())
            return None
        if account_disabled(ldap_user.attrs):
            logger.info("directory: %s is disabled in the directory; login refused", user.get_username())
            return None
        return user

    def get_or_build_user(self, username, ldap_user):
        user, built = super().get_or_build_user(username, ldap_user)
        if not built and not is_directory_account(user):
            logger.warning(
                "directory: %s is a local account; the directory's %s may not log in as it", user.pk, ldap_user.dn
            )
            raise ldap_user.AuthenticationFailed("a local account has this name")
        return user, built

    def get_user(self, user_id):
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    async def aget_user(self, user_id):
        # django-auth-ldap 5.4.0's backend is not a BaseBackend and has no aget_user, which Django 5.2's
        # request.auser() calls for the backend a session logged in with: every page of a directory user
        # served under ASGI raised (the async middlewares ask for the user that way).
        return await sync_to_async(self.get_user)(user_id)


@receiver(populate_user, sender=DirectoryBackend)
def _mark_new_account(sender, user, ldap_user, **kwargs):
    # Sent before the save of a new account, after django-auth-ldap made its password unusable.
    if user._state.adding:
        user.password = DIRECTORY_PASSWORD_PREFIX + get_random_string(32)
    # A directory's names and addresses may be longer than the user model's fields hold.
    for name in ("first_name", "last_name", "email"):
        limit = user._meta.get_field(name).max_length
        value = getattr(user, name, "") or ""
        if limit and len(value) > limit:
            setattr(user, name, value[:limit])


# django-auth-ldap's names for where an error happened.
_CONTEXTS = {
    "authenticate": "a login",
    "search_for_user_dn": "looking up an account",
    "populate_user": "reading an account",
    "mirror_groups": "reading an account's groups",
    "get_group_permissions": "reading an account's groups",
}


@receiver(ldap_error, sender=DirectoryBackend)
def _log_directory_error(sender, context, user, request, exception, **kwargs):
    logger.error(
        "directory: %s failed at %s: %s; directory logins fail meanwhile, local accounts still log in",
        _CONTEXTS.get(context, context),
        settings.AUTH_LDAP_SERVER_URI,
        describe(exception),
    )


# --- The sync


@dataclass
class SyncReport:
    """What one sync did (user names), for the command's output and the tests."""

    checked: int = 0
    changed: list = field(default_factory=list)
    disabled: list = field(default_factory=list)


# A sync that would disable more than half of the accounts it checked, and at least this many,
# is refused: a changed LDAP_USER_FILTER or a directory restructured under the search base looks
# like that, and disabling every account (sessions and API tokens gone) is costly to undo.
MASS_DISABLE_MINIMUM = 5


def sync_directory(*, allow_mass_disable=False):
    """Bring every active directory account in line with the directory; raise DirectoryUnavailable if it cannot."""
    backend = DirectoryBackend()
    report = SyncReport()
    connection = _connect(backend)
    try:
        gone = []
        for user in directory_accounts().filter(is_active=True).order_by("pk"):
            report.checked += 1
            try:
                results = _search(backend, connection, user)
                if len(results) > 1:  # a login is refused too; not a reason to disable anyone
                    logger.warning("directory: %s matches %d entries; left as it is", user.get_username(), len(results))
                    continue
                if not results or account_disabled(results[0][1]):
                    gone.append((user, "disabled" if results else "not found"))
                    continue
                with transaction.atomic():
                    if _update(backend, connection, user, *results[0]):
                        report.changed.append(user.get_username())
            except ldap.LDAPError as exc:
                raise DirectoryUnavailable(f"reading {user.get_username()}: {describe(exc)}") from exc
            except DatabaseError as exc:  # one account's values the database refuses: the others go on
                logger.error("directory: %s not updated: %s", user.get_username(), exc.__class__.__name__)
        if len(gone) >= MASS_DISABLE_MINIMUM and len(gone) * 2 > report.checked and not allow_mass_disable:
            raise DirectoryUnavailable(
                f"{len(gone)} of {report.checked} accounts would be disabled; if LDAP_USER_SEARCH_BASE and "
                f"LDAP_USER_FILTER are right, run manage.py ldap_sync --allow-mass-disable once"
            )
        disable_accounts([(user, f"{reason} in the directory") for user, reason in gone])
        report.disabled = [user.get_username() for user, _ in gone]
    finally:
        connection.unbind_s()
    return report


def _connect(backend):
    """A connection bound as LDAP_BIND_DN, made the way django-auth-ldap makes its own (options, StartTLS)."""
    try:
        return _LDAPUser(backend, username="").connection
    except ldap.LDAPError as exc:
        raise DirectoryUnavailable(f"{settings.AUTH_LDAP_SERVER_URI}: {describe(exc)}") from exc


def _search(backend, connection, user):
    """The [(dn, attrs)] the login search finds for the account: one, none, or (a bad filter) several."""
    username = backend.django_to_ldap_username(user.get_username())
    return list(backend.settings.USER_SEARCH.execute(connection, {"user": username}) or ())


def _update(backend, connection, user, dn, attrs):
    """Mirror the account's groups and flags as a login would; return whether anything changed."""
    # django-auth-ldap's group code, on this connection and this entry (no second search or bind).
    ldap_user = _LDAPUser(backend, user=user)
    ldap_user._connection, ldap_user._connection_bound = connection, True
    ldap_user._user_dn, ldap_user._user_attrs = dn, attrs
    changed = False
    flags = backend.settings.USER_FLAGS_BY_GROUP
    if flags:
        groups = ldap_user._get_groups()
        fields = [flag for flag, group_dn in flags.items() if getattr(user, flag) != groups.is_member_of(group_dn)]
        if fields:
            for flag in fields:
                setattr(user, flag, not getattr(user, flag))
            user.save(update_fields=fields)
            logger.info(
                "directory: %s: %s", user.get_username(), ", ".join(f"{flag}={getattr(user, flag)}" for flag in fields)
            )
            changed = True
    if groupsync.mirror_groups(
        user, ldap_user._get_groups().get_group_names(), backend.settings.MIRROR_GROUPS, source="directory"
    ):
        changed = True
    return changed


def disable_accounts(accounts):
    """Make each ``(user, reason)``'s user inactive, delete their sessions and revoke their API tokens.

    Their open sockets close: the user's save and each ended session are told to them after
    commit (conferences/signals.py, broadcast.send_session_ended). Sessions are found in Django's
    session table (the project's session engine) in one pass for all the accounts; with another
    engine they stay, but are no longer honoured for an inactive user.
    """
    if not accounts:
        return
    sessions = {str(user.pk): [] for user, _ in accounts}
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        owner = str(session.get_decoded().get(SESSION_KEY))
        if owner in sessions:
            sessions[owner].append(session.session_key)
    for user, reason in accounts:
        keys = sessions[str(user.pk)]
        with transaction.atomic():
            user.is_active = False
            user.save(update_fields=["is_active"])
            Session.objects.filter(session_key__in=keys).delete()
            revoked = tokens.revoke_all_of(user.pk)
            for key in keys:
                transaction.on_commit(partial(broadcast.send_session_ended, key))
        logger.warning(
            "directory: %s disabled (%s): %d session(s) ended, %d API token(s) revoked",
            user.get_username(),
            reason,
            len(keys),
            revoked,
        )


def sync_and_log(step=sync_directory):
    """One sync, its outcome logged; a failure is logged, never raised (the loops go on)."""
    close_old_connections()
    try:
        report = step()
    except DirectoryUnavailable as exc:
        logger.error("directory: sync failed, nothing changed (%s)", exc)
    except Exception:  # noqa: BLE001 (a database error: the loop goes on, as a worker's does)
        logger.exception("directory: sync failed")
    else:
        logger.info(
            "directory: sync: %d account(s) checked, %d changed, %d disabled",
            report.checked,
            len(report.changed),
            len(report.disabled),
        )


def run_sync_loop(*, minutes, stopping, step=sync_directory):
    """Sync every ``minutes`` until ``stopping`` (a threading.Event) is set: ``manage.py ldap_sync --loop``."""
    try:
        while not stopping.is_set():
            started = time.monotonic()
            sync_and_log(step)
            stopping.wait(max(0.0, minutes * 60 - (time.monotonic() - started)))
    finally:
        connection.close()


async def run_sync_loop_async(*, minutes, stopping, step=sync_directory):
    """The same on an event loop (``stopping``: an asyncio.Event), for ``manage.py serve``'s embedded mode.

    Each sync runs in a thread of its own (python-ldap blocks); its broadcasts reach this loop's
    in-memory channel layer through asgiref, as any sync code called from async code does.
    """
    while not stopping.is_set():
        started = time.monotonic()
        await sync_to_async(_sync_in_thread, thread_sensitive=False)(step)
        try:
            await asyncio.wait_for(stopping.wait(), timeout=max(0.0, minutes * 60 - (time.monotonic() - started)))
        except TimeoutError:
            pass


def _sync_in_thread(step):
    try:
        sync_and_log(step)
    finally:
        connection.close()  # the thread's own connection: the thread is not reused for requests
