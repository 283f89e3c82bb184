"""Fixed-window rate limits counted in Redis, shared by every process that counts.

Layout::

    {ns}rate:{scope}:{window}    string: requests counted in that window; expires
                                 a second after the window ends

``window`` is the Unix time divided by the window's length, so every process
agrees on where a window starts and ends without talking to the others.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis


class RateLimiter:
    """Counts hits per scope and window, and says how long to wait past a limit."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.ns = namespace

    async def hit(self, scope: str, window_seconds: int, limit: int) -> int:
        """Count one request in ``scope``'s current window; seconds to wait if over ``limit``."""
        now = int(time.time())
        window = now // window_seconds
        key = f"{self.ns}rate:{scope}:{window}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_seconds + 1)
            count, _ = await pipe.execute()
        if count <= limit:
            return 0
        return (window + 1) * window_seconds - now
