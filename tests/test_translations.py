"""The Russian catalogue is complete and compiles."""

import re
import shutil
import subprocess
from pathlib import Path

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
