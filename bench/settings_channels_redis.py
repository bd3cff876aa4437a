"""Bench-only settings: channels_redis's own RedisChannelLayer instead of the project's subclass.

Selected with DJANGO_SETTINGS_MODULE=bench.settings_channels_redis by
bench/memory.py, to measure what conferencesite/layers.py changes: the same
configuration, without its reads that a closing socket cannot cut.
"""

from conferencesite.settings import *  # noqa: F403
from conferencesite.settings import CHANNEL_LAYERS

CHANNEL_LAYERS = {"default": {**CHANNEL_LAYERS["default"], "BACKEND": "channels_redis.core.RedisChannelLayer"}}
