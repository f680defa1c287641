"""Per-site rate limits shared by every process of the engine (the `limits` library's moving
window on Redis), so N workers together stay under a vendor's quota.

Which store: CHARTBRIDGE_RATE_LIMIT_URL (`redis://…`), else CHARTBRIDGE_BROKER_URL when it
is a Redis URL (workers that share a Redis broker share their quotas too), else none: the
embedded single-process engine keeps each adapter's in-process throttle.

`SharedThrottle` has the interface of an adapter's in-process throttle:
- acquire(): wait for a slot. At most `amount` slots in any `window` seconds for one key,
  counted in Redis by one atomic script (limits' MovingWindowRateLimiter). A caller that had
  to wait sleeps until the window's oldest slot expires plus `margin` (15 % of the window).
  Calls are also spaced at least 1.1/rate apart across all processes (a Redis key set with
  NX and that expiry: whoever sets it has the next slot; SPACING_MARGIN). The receiver counts arrivals:
  a burst of a whole window's calls reaches it spread out by its own queue, while the next
  window's calls arrive on time, and the two could land in one second; evenly spaced calls
  do not queue;
- hold(seconds): the vendor said Retry-After: no slot for anyone before then (a Redis key
  with that expiry, read before each slot).
If Redis cannot be reached, acquire() raises TransientError(maybe_delivered=False): nothing
was sent, and sending without the shared count could go over the site's quota.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

from chartbridge.core.errors import TransientError

PREFIX = "chartbridge:rate"
# Calls are spaced (1 + this)/rate apart: N+1 calls then span more than one second by
# 10 %, room for the network and the receiver's own jitter (the receiver counts arrivals).
# The engine's steady rate is ~91 % of the configured ceiling.
SPACING_MARGIN = 0.10


def shared_limit_url(environ: dict | None = None) -> str | None:
    env = os.environ if environ is None else environ
    url = (env.get("CHARTBRIDGE_RATE_LIMIT_URL") or "").strip()
    if url:
        return url
    broker = (env.get("CHARTBRIDGE_BROKER_URL") or "").strip()
    return broker if broker.startswith(("redis://", "rediss://")) else None


def window_for(rate: float) -> tuple[int, int]:
    """(amount, window seconds) for `rate` calls a second, never above it: 8.5/s -> 8 per
    1 s; 0.5/s -> 1 per 2 s."""
    if rate >= 1:
        return math.floor(rate), 1
    return 1, math.ceil(1 / rate)


class SharedThrottle:
    def __init__(self, url: str, key: str, rate: float, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from limits import RateLimitItemPerSecond, storage, strategies

        self.key = key
        self._storage = storage.storage_from_string(url, key_prefix=PREFIX)
        self._limiter = strategies.MovingWindowRateLimiter(self._storage)
        self._item_cls = RateLimitItemPerSecond
        self._sleep = sleep
        self._redis = None
        self._url = url
        self._lock = threading.Lock()
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        self._rate = rate
        amount, window = window_for(rate)
        self._item = self._item_cls(amount, window)
        self.margin = 0.15 * window
        self.spacing_ms = max(1, math.ceil(1000 * (1 + SPACING_MARGIN) / rate))

    def _client(self):
        if self._redis is None:
            import redis
            self._redis = redis.Redis.from_url(self._url)
        return self._redis

    def _spacing_key(self) -> str:
        return f"{PREFIX}:next:{self.key}"

    def _hold_key(self) -> str:
        return f"{PREFIX}:hold:{self.key}"

    def acquire(self) -> float:
        """Wait for this call's slot; returns the seconds waited."""
        waited = 0.0
        try:
            while True:
                held = self._client().pttl(self._hold_key())
                if held and held > 0:
                    pause = held / 1000 + self.margin
                elif not self._client().set(self._spacing_key(), b"1", nx=True,
                                            px=self.spacing_ms):
                    pause = max(1, self._client().pttl(self._spacing_key())) / 1000
                elif self._limiter.hit(self._item, self.key):
                    return waited
                else:
                    stats = self._limiter.get_window_stats(self._item, self.key)
                    pause = max(0.0, stats.reset_time - time.time()) + self.margin
                self._sleep(pause)
                waited += pause
        except (OSError, ConnectionError) as exc:
            raise TransientError(f"the shared rate limit store is unreachable "
                                 f"({type(exc).__name__})", maybe_delivered=False) from None
        except Exception as exc:                       # redis-py's own errors
            if type(exc).__module__.startswith(("redis", "limits")):
                raise TransientError(f"the shared rate limit store failed "
                                     f"({type(exc).__name__})", maybe_delivered=False) from None
            raise

    def hold(self, seconds: float) -> None:
        """No slot for anyone before `seconds` from now (never shortens a longer hold)."""
        ms = max(1, int(seconds * 1000))
        try:
            client = self._client()
            if client.pttl(self._hold_key()) < ms:
                client.set(self._hold_key(), b"1", px=ms)
        except Exception as exc:                       # best effort: the 429 is raised anyway
            if not type(exc).__module__.startswith("redis"):
                raise


_SHARED: dict[tuple[str, str], SharedThrottle] = {}
_SHARED_LOCK = threading.Lock()


def shared_throttle(key: str, rate: float, url: str) -> SharedThrottle:
    """The process's SharedThrottle for `key` on `url` (one Redis connection pool each)."""
    with _SHARED_LOCK:
        found = _SHARED.get((url, key))
        if found is None:
            found = _SHARED[(url, key)] = SharedThrottle(url, key, rate)
        elif found.rate != rate:
            found.rate = rate
        return found
