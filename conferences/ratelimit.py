"""A token bucket: ``burst`` at once, then ``rate`` a second (the sockets' frames, the keypad's actions)."""

import time


class TokenBucket:
    """Allows ``burst`` at once and ``rate`` per second after that (``clock``: seconds, monotonic)."""

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
