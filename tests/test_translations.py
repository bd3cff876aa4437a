"""The Russian catalogue is complete and compiles."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PO = Path(__file__).resolve().parent.parent / "locale" / "ru" / "LC_MESSAGES" / "django.po"


def test_every_message_is_translated():
    entries = PO.read_text(encoding="utf-8").split("\n\n")[1:]
    # An empty msgstr is "" with no continuation line ("" then "…" lines is a long, wrapped one).
    empty = re.compile(r'^msgstr(\[\d\])? ""(?!\n")$', re.M)
    untranslated = [entry for entry in entries if empty.search(entry) and "msgid" in entry]
    assert untranslated == []
    assert "#, fuzzy" not in PO.read_text(encoding="utf-8")


def test_catalogue_compiles(tmp_path):
    msgfmt = shutil.which("msgfmt")
    assert msgfmt, "gettext's msgfmt is missing: scripts/setup installs it"
    result = subprocess.run([msgfmt, "--check", "-o", str(tmp_path / "django.mo"), str(PO)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_every_protocol_error_has_its_russian_text():
    from conferences import protocol

    for error in protocol.ERRORS:
        assert protocol.localized(error, "en") == error
        russian = protocol.localized(error, "ru")
        assert russian and russian != error, error


@pytest.mark.parametrize(
    "count,english,russian",
    [
        (1, "1 caller could not be changed", "1 абонента не удалось изменить"),
        (3, "3 callers could not be changed", "3 абонентов не удалось изменить"),
        (11, "11 callers could not be changed", "11 абонентов не удалось изменить"),
    ],
)
def test_a_counted_error_in_each_language(count, english, russian):
    from conferences import protocol

    error = protocol.callers_not_changed(count)
    assert error == f"{count} caller(s) could not be changed"  # the protocol text stays as it was
    assert protocol.localized(error, "en") == english
    assert protocol.localized(error, "ru") == russian
    assert protocol.localized("something new", "ru") == "something new"


@pytest.mark.parametrize(
    "cookie,header,expected",
    [
        (None, "ru-RU,ru;q=0.9,en;q=0.8", "ru"),
        (None, "de-DE,de;q=0.9", "en"),  # not offered: the site's language
        ("ru", "en-US", "ru"),  # the language cookie first, as for the page itself
        (None, "*;q=0.1," * 200, "en"),  # a hostile header: bounded, no error
        (None, "*, ru;q=0.5", "en"),  # after "*" nothing counts, as for the page (LocaleMiddleware)
        (None, "ru;q=0.5," + "x" * 5000, "ru"),  # a long header is cut, what came first still counts
        (None, None, "en"),
    ],
)
def test_the_language_of_a_socket_is_the_language_of_its_page(cookie, header, expected, settings):
    from conferences import protocol

    scope = {"cookies": {settings.LANGUAGE_COOKIE_NAME: cookie} if cookie else {}, "headers": []}
    if header is not None:
        scope["headers"].append((b"accept-language", header.encode()))
    assert protocol.language_of(scope) == expected
