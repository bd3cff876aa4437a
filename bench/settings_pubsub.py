"""Bench-only settings: the project's settings with Redis pub/sub as the channel layer.

Selected with DJANGO_SETTINGS_MODULE=bench.settings_pubsub for the web and
worker processes of the ``pubsub`` variants of ``bench/run.py``.
"""

from conferencesite.settings import *  # noqa: F403
from conferencesite.settings import REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            # The same host shape as conferencesite.env.channel_layers_for. Pub/sub
            # channel names are not scoped by Redis database number: a prefix of
            # its own keeps the bench apart from anyone else on this Redis.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": "bench",
        },
    }
}
