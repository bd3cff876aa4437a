"""Bench-only settings: the project's channel layer with a tiny capacity, so that it drops.

Selected with DJANGO_SETTINGS_MODULE=bench.settings_small_capacity for the
``drops`` configuration of ``bench/run.py``: a burst then overflows what one
web process may have waiting, and the figures show how often the seq/resync
protocol had to repair a viewer's roster and how fast it did.
"""

from conferencesite.settings import *  # noqa: F403
from conferencesite.settings import CHANNEL_LAYERS

CHANNEL_LAYERS = {
    "default": {
        **CHANNEL_LAYERS["default"],
        "CONFIG": {**CHANNEL_LAYERS["default"]["CONFIG"], "capacity": 10},
    }
}
