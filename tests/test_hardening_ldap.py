"""One hostile directory entry (a group whose name is longer than Django's 150 characters) does not stop the
whole directory sync: accounts gone from the directory are still disabled (an attacker's review)."""

import ldap
import ldap.modlist
import pytest
from django.contrib.auth.models import User
from django.test import Client

from conferences import directory
from tests.test_ldap import _fresh, group_dn, person, site_login, slapd, use_directory  # noqa: F401 (fixtures)


@pytest.mark.django_db
def test_a_group_with_an_overlong_name_does_not_stop_the_sync_disabling_others(use_directory, slapd):  # noqa: F811
    assert site_login(Client(), "alice", "alice-pw").status_code == 302
    assert site_login(Client(), "bob", "bob-pw").status_code == 302
    long_cn = "g" * 200  # any directory user allowed to make a group (or to name one) can do this
    connection = slapd.admin()
    try:
        connection.add_s(
            group_dn(long_cn),
            ldap.modlist.addModlist(
                {"objectClass": [b"groupOfNames"], "cn": [long_cn.encode()], "member": [person("alice").encode()]}
            ),
        )
    finally:
        connection.unbind_s()
    slapd.remove_member("sales", "bob")
    slapd.delete(person("bob"))  # bob left the company
    try:
        directory.sync_directory()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the sync stopped at alice's groups: {exc!r}; bob keeps his sessions and tokens")
    assert not User.objects.get(username="bob").is_active
