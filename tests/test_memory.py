"""The allocator setting that keeps the web process's heap flat under socket churn (conferencesite/memory.py)."""

import os
import subprocess
import sys

from tests.stack import ROOT

# In a fresh interpreter: free one large mapped block (glibc then raises its mmap threshold
# unless it is fixed), then count how many of eight 256 KiB blocks get a mapping of their own.
SCRIPT = """
import ctypes, sys
from conferencesite.memory import fix_malloc_thresholds

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
fixed = fix_malloc_thresholds() if sys.argv[1] == "fixed" else None
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblks
blocks = [bytearray(256 << 10) for _ in range(8)]
print(fixed, libc.mallinfo2().hblks - before)
"""


def mapped_blocks(mode, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=environ, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_large_blocks_keep_their_own_mapping_after_a_larger_one_was_freed():
    # glibc's default: after the 4 MiB block is freed, 256 KiB blocks come from the heap,
    # whose freed pages it keeps; that is what made the web process grow.
    assert mapped_blocks("default") == ("None", 0)
    # Fixed thresholds: each gets its own mapping, handed back to the system when freed.
    assert mapped_blocks("fixed") == ("True", 8)


def test_thresholds_chosen_in_the_environment_are_left_alone():
    assert mapped_blocks("fixed", MALLOC_MMAP_THRESHOLD_="1048576") == ("False", 0)


def test_every_server_process_fixes_them_at_start(monkeypatch):
    from conferencesite import startup

    calls = []
    monkeypatch.setattr(startup, "_done", [])
    monkeypatch.setattr(startup, "fix_malloc_thresholds", lambda: calls.append(True))
    monkeypatch.setattr("conferences.models.AsteriskServer.objects.sync_default_from_settings", lambda: None)
    startup.on_process_start()
    startup.on_process_start()
    assert calls == [True]
