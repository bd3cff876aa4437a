"""Keep glibc's heap from growing under socket churn.

glibc's malloc gives each block of 128 KiB or more its own mapping and hands
it back to the system when it is freed, until such a block is freed: then it
raises that limit to the block's size (the "dynamic mmap threshold", up to
32 MiB) and serves those sizes from its heap, whose freed pages it keeps.
Measured in the web process under socket churn (docs/reliability.md,
"Memory"): Python's live objects and malloc's bytes in use stayed flat while
the heap grew about 0.7 MB for every 1,000 sockets, for as long as the churn
went on; with the thresholds fixed it stayed flat. Setting them explicitly
turns the adjustment off (mallopt(3)), as ``MALLOC_MMAP_THRESHOLD_=131072
MALLOC_TRIM_THRESHOLD_=131072`` in the environment would; values set there
are left alone.
"""

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024  # glibc's own default, kept fixed


def fix_malloc_thresholds():
    """Turn glibc's dynamic mmap threshold off in this process; True when done."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the operator chose
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0: nothing to tune there.
    done = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
    if not done:
        logger.debug("mallopt not supported here; the allocator keeps its defaults")
    return done
