"""CacheManager: memory (L1) -> Redis (L2) -> database (L3), read-through.

L1   in-process OrderedDict LRU with a TTL per entry, bounded by entries and by bytes. Values
     are returned by reference: callers must treat them as read-only.
L2   Redis; entries are `schema.cache_value(key)` strings in the wire format below with
     PX = TTL; pipelined get_many / set_many. Its capacity is stated
     (settings.cache_l2_max_bytes) and enforced by `enforce_l2_capacity` (idlest first).
     Per-request commands go over each thread's own single-connection client (no pool
     checkout/release per command). A read with a loader is one script: the entry, or else the
     load lock taken (a miss pays one round trip, not GET then SET NX).
L3   the caller's loader (a database read); `get_cached_data` fills the upper tiers in the
     caller's thread. The L2 fill (with the lock release) is one script sent without waiting
     for its reply: Redis runs it on arrival; the replies are read in batches, before explicit
     writes and invalidations, and by `flush()`, and a failed fill is counted as an L2 error.
     (A fill thread was tried first: its GIL hand-offs made L2 hits slower than the round trip
     it saved.)

Range-chunked reads (`read_blocks`): a window of an append-only axis (days) is served from
fixed-size blocks cached under their own keys (`block_key`: closed blocks never change, the
open block is keyed by the newest index), so overlapping windows share blocks.
core.db.cached_closes / cached_closes_tail build the risk code's closes reads on it.

Tier policy per key prefix (the text before the first ':'): TTL and whether to skip L2.
`choose_tiers` decides skip_l2 by measurement: where the loader answered faster than Redis
did, caching the prefix in Redis only adds a round trip. `optimize_cache` also tunes TTL per
prefix and the L1 size from an access log, and reports what it changed.

Coherence: `set`/`invalidate` publish the key on schema.CACHE_INVALIDATE; every manager with a
running listener drops its L1 copy. A listener that lost its connection clears its whole L1
when it reconnects (it may have missed invalidations).

Stampede protection: one loader per key at a time in a process (a per-key lock); across
processes a short Redis SET NX lock makes other processes wait for the L2 fill instead.

Failure: Redis down -> L1 and the loader still serve; errors are counted, L2 is skipped for
a short back-off, the caller never sees an exception. A corrupt L2 entry is a miss: deleted
and logged. An unserializable value raises TypeError before anything is stored; keys and
values over the size limits raise ValueError.

Every access is recorded as the `cache_access` telemetry stage.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import socket
import struct
import sys
import threading
import time
import uuid
from collections import OrderedDict
from time import perf_counter_ns
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import redis

from core import schema
from core.telemetry.recorder import (EXACT_LIMIT, MAX_SLOT, RECORDER, SUB_BITS, SUM_SLOT,
                                     _SHIFT_BASE)

log = logging.getLogger(__name__)

MAX_KEY_LEN = 256
_MAGIC = 0xC7
_HDR = struct.Struct("<BBI")           # magic, kind, header length
_TIERS = ("l1", "l2", "l3")
_RING = 4096                           # latency samples kept per tier for p50/p99
L2_BACKOFF_S = 1.0
LOAD_LOCK_MS = 5000
FILL_ACK_BATCH = 16                    # L2 fills sent before their replies are read (one recv)


class CorruptEntryError(ValueError):
    """Bytes that are not a value written by `encode`."""


# ---- serialization --------------------------------------------------------------------
# kind 1 bytes, 2 str, 3 JSON (dict/list/int/float/bool/None), 4 numpy array,
# 5 pandas DataFrame, 6 pandas Series. Arrays travel as raw buffers behind a JSON header.
def _array_header(arr: np.ndarray) -> dict:
    if arr.dtype.hasobject:
        raise TypeError(f"cannot cache a numpy array of dtype object (shape {arr.shape}): "
                        "only fixed-size dtypes are serializable")
    return {"dtype": arr.dtype.str, "shape": list(arr.shape)}


def _column_parts(values, buffers: list) -> dict:
    arr = np.asarray(values)
    if arr.dtype.hasobject:
        items = arr.tolist()
        if not all(isinstance(v, str) for v in items):
            raise TypeError("cannot cache a pandas column of mixed Python objects; "
                            "only numeric, datetime and string columns are serializable")
        return {"str": items}
    arr = np.ascontiguousarray(arr)
    head = _array_header(arr)
    buffers.append(arr.tobytes())
    return head


def _column_value(head: dict, data: memoryview, offset: int) -> tuple[Any, int]:
    if "str" in head:
        return np.array(head["str"], dtype=object), offset
    dtype = np.dtype(head["dtype"])
    n = dtype.itemsize * math.prod(head["shape"])
    arr = np.frombuffer(data[offset:offset + n], dtype=dtype).reshape(head["shape"]).copy()
    return arr, offset + n


def _frame_header(frame, buffers: list) -> dict:
    import pandas as pd
    idx = frame.index
    if getattr(idx, "tz", None) is not None:
        raise TypeError("cannot cache a pandas object with a timezone-aware index; convert to UTC naive")
    head = {"columns": [str(c) if not isinstance(c, (int, float)) else c for c in frame.columns],
            "index_name": idx.name}
    if isinstance(idx, pd.RangeIndex):
        head["range"] = [idx.start, idx.stop, idx.step]
    else:
        head["index"] = _column_parts(idx.to_numpy(), buffers)
    head["data"] = [_column_parts(frame.iloc[:, i].to_numpy(), buffers) for i in range(frame.shape[1])]
    return head


def encode(value: Any) -> bytes:
    """Serialize `value`; raises TypeError for what cannot round-trip exactly."""
    buffers: list[bytes] = []
    if isinstance(value, (bytes, bytearray, memoryview)):
        kind, head, buffers = 1, b"", [bytes(value)]
    elif isinstance(value, str):
        kind, head, buffers = 2, b"", [value.encode("utf-8")]
    elif isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        kind, head = 4, json.dumps(_array_header(arr)).encode()
        buffers = [arr.tobytes()]
    elif type(value).__module__.startswith("pandas"):
        import pandas as pd
        if isinstance(value, pd.DataFrame):
            kind, head = 5, json.dumps(_frame_header(value, buffers)).encode()
        elif isinstance(value, pd.Series):
            head_dict = _frame_header(value.to_frame(name="_"), buffers)
            head_dict["name"] = value.name
            kind, head = 6, json.dumps(head_dict).encode()
        else:
            raise TypeError(f"cannot cache a {type(value).__name__}: only DataFrame and Series of pandas")
    else:
        try:
            text = json.dumps(value, allow_nan=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot cache a value of type {type(value).__name__}: {exc}") from None
        if json.loads(text) != value and not _has_nan(value):
            raise TypeError(f"cannot cache {type(value).__name__} exactly (tuples, non-string keys "
                            "or sets do not survive JSON); convert it first")
        kind, head = 3, text.encode()
    return b"".join([_HDR.pack(_MAGIC, kind, len(head)), head, *buffers])


def _has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def decode(blob: bytes) -> Any:
    """Inverse of `encode`; raises CorruptEntryError for anything else."""
    try:
        magic, kind, hlen = _HDR.unpack_from(blob, 0)
        if magic != _MAGIC:
            raise CorruptEntryError("bad magic byte")
        start = _HDR.size
        head, body = blob[start:start + hlen], memoryview(blob)[start + hlen:]
        if kind == 1:
            return bytes(body)
        if kind == 2:
            return bytes(body).decode("utf-8")
        if kind == 3:
            return json.loads(head)
        if kind == 4:
            meta = json.loads(head)
            dtype = np.dtype(meta["dtype"])
            if dtype.itemsize * math.prod(meta["shape"]) != len(body):   # math.prod: np.prod costs ~3 µs
                raise CorruptEntryError("array length does not match its header")
            return np.frombuffer(body, dtype=dtype).reshape(meta["shape"]).copy()
        if kind in (5, 6):
            return _decode_frame(json.loads(head), body, kind)
    except CorruptEntryError:
        raise
    except Exception as exc:  # noqa: BLE001  (any parse failure means the bytes are not ours)
        raise CorruptEntryError(f"undecodable cache entry: {exc}") from None
    raise CorruptEntryError(f"unknown entry kind {kind}")


def _decode_frame(head: dict, body: memoryview, kind: int):
    import pandas as pd
    offset = 0
    if "range" in head:
        index = pd.RangeIndex(*head["range"], name=head["index_name"])
    else:
        arr, offset = _column_value(head["index"], body, offset)
        index = pd.Index(arr, name=head["index_name"])
    cols = {}
    for name, part in zip(head["columns"], head["data"]):
        cols[name], offset = _column_value(part, body, offset)
    if offset != len(body):
        raise CorruptEntryError("frame length does not match its header")
    frame = pd.DataFrame(cols, index=index, columns=head["columns"])
    if kind == 6:
        series = frame.iloc[:, 0]
        series.name = head.get("name")
        return series
    return frame


def estimate_size(value: Any) -> int:
    """Bytes an L1 entry holds, cheaply: buffers exactly, containers shallowly."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes + 112
    if hasattr(value, "memory_usage") and hasattr(value, "columns"):
        return int(value.memory_usage(index=True, deep=False).sum()) + 400
    if isinstance(value, (bytes, str, bytearray)):
        return sys.getsizeof(value)
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sys.getsizeof(value) + sum(sys.getsizeof(v) for v in value)
    return sys.getsizeof(value)


def prefix_of(key: str) -> str:
    return key.split(":", 1)[0]


def _check_key(key) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"cache key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"cache key of {len(key)} characters is over the limit of {MAX_KEY_LEN}")


# ---- statistics -----------------------------------------------------------------------
class _TierStats:
    __slots__ = ("hits", "misses", "errors", "ring", "n")

    def __init__(self):
        self.hits = self.misses = self.errors = 0
        self.ring = [0] * _RING
        self.n = 0

    def add(self, ns: int) -> None:
        self.ring[self.n & (_RING - 1)] = ns
        self.n += 1

    def summary(self) -> dict:
        samples = np.array(self.ring[:min(self.n, _RING)], dtype=np.float64)
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors,
                "hit_rate": self.hits / total if total else None,
                "p50_us": float(np.percentile(samples, 50)) / 1e3 if samples.size else None,
                "p99_us": float(np.percentile(samples, 99)) / 1e3 if samples.size else None}


class CacheManager:
    """Three-tier read-through cache. One per process; thread-safe."""

    def __init__(self, client: redis.Redis | None = None, max_entries: int = 1000,
                 max_bytes: int = 64 * 1024**2, default_ttl_s: float = 300.0,
                 max_value_bytes: int = 8 * 1024**2, l2_max_bytes: int = 256 * 1024**2,
                 clock: Callable[[], float] = time.monotonic, record_telemetry: bool = True):
        for name, v in (("max_entries", max_entries), ("max_bytes", max_bytes),
                        ("max_value_bytes", max_value_bytes), ("l2_max_bytes", l2_max_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(default_ttl_s, (int, float)) and math.isfinite(default_ttl_s) and default_ttl_s > 0):
            raise ValueError(f"default_ttl_s must be a positive number, got {default_ttl_s!r}")
        self.client = client
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.default_ttl_s = float(default_ttl_s)
        self.max_value_bytes, self.l2_max_bytes = max_value_bytes, l2_max_bytes
        self._clock = clock
        self._l1: OrderedDict[str, tuple] = OrderedDict()   # key -> (value, expires_at, nbytes)
        self._l1_bytes = 0
        self._lock = threading.RLock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.policy: dict[str, dict] = {}                   # prefix -> {"ttl_s", "skip_l2"}
        self.stats = {t: _TierStats() for t in _TIERS}
        self.evictions = self.expirations = self.invalidations = 0
        self.l2_corrupt = 0
        self.loads = 0
        self._l2_down_until = 0.0
        self._prefix_cost: dict[str, dict] = {}             # prefix -> {"l2_ns", "l2_n", "l3_ns", "l3_n"}
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self.access_log: list[tuple[float, str, str]] | None = None   # (t, key, tier) when enabled
        self._stage_buf = RECORDER.stage("cache_access").buf if record_telemetry else None
        self._local = threading.local()                     # this thread's single-connection client
        self._tokens = itertools.count()

    @classmethod
    def from_settings(cls, client: redis.Redis | None, settings=None, **kwargs) -> "CacheManager":
        """A manager with the bounds and TTL of settings (CONSOLE_CACHE_*)."""
        if settings is None:
            from core.settings import get_settings
            settings = get_settings()
        return cls(client, max_entries=settings.cache_max_entries, max_bytes=settings.cache_max_bytes,
                   default_ttl_s=settings.cache_ttl_s, max_value_bytes=settings.cache_max_value_bytes,
                   l2_max_bytes=settings.cache_l2_max_bytes, **kwargs)

    # ---- hot path ----------------------------------------------------------------------
    def _record(self, t0: int) -> None:
        buf = self._stage_buf
        if buf is None:
            return
        d = perf_counter_ns() - t0
        if d < EXACT_LIMIT:
            buf[d] += 1
        else:
            shift = d.bit_length() - _SHIFT_BASE
            buf[(shift << SUB_BITS) + (d >> shift)] += 1
        buf[SUM_SLOT] += d
        if d > buf[MAX_SLOT]:
            buf[MAX_SLOT] = d

    def get_l1(self, key: str, default=None):
        """L1 only: the value, or `default` when absent or expired."""
        t0 = perf_counter_ns()
        entry = self._l1.get(key)
        if entry is not None and entry[1] > self._clock():
            try:
                self._l1.move_to_end(key)
            except KeyError:          # evicted by another thread meanwhile
                pass
            st = self.stats["l1"]
            st.hits += 1
            st.ring[st.n & 4095] = perf_counter_ns() - t0
            st.n += 1
            if self.access_log is not None:
                self.access_log.append((self._clock(), key, "l1"))
            self._record(t0)
            return entry[0]
        self.stats["l1"].misses += 1
        if entry is not None:
            self._drop_l1(key, expired=True)
        return default

    def get_cached_data(self, key: str, loader: Callable[[], Any] | None = None,
                        ttl_s: float | None = None):
        """The value for `key` from the first tier that has it, filling the tiers above.

        `loader()` is the database read (L3); without one a miss returns None. Only one
        loader per key runs at a time (stampede protection).
        """
        t0 = perf_counter_ns()
        # the L1 hit path repeats get_l1's on purpose: a shared helper call costs ~60 ns of the
        # 1,000 ns budget (cache.l1_hit_ns)
        entry = self._l1.get(key)
        if entry is not None and entry[1] > self._clock():
            try:
                self._l1.move_to_end(key)
            except KeyError:
                pass
            st = self.stats["l1"]
            st.hits += 1
            st.ring[st.n & 4095] = perf_counter_ns() - t0
            st.n += 1
            if self.access_log is not None:
                self.access_log.append((self._clock(), key, "l1"))
            self._record(t0)
            return entry[0]
        _check_key(key)
        self.stats["l1"].misses += 1
        if entry is not None:
            self._drop_l1(key, expired=True)
        return self._miss(key, loader, ttl_s, t0)

    def _miss(self, key: str, loader, ttl_s, t0: int):
        prefix = prefix_of(key)
        pol = self.policy.get(prefix, {})
        ttl = float(ttl_s if ttl_s is not None else pol.get("ttl_s", self.default_ttl_s))
        use_l2 = not pol.get("skip_l2", False)
        token = None
        if use_l2:
            # with a loader, one round trip reads the entry or, when absent, takes the load lock
            found, value, token = self._l2_get(key, prefix, lock=loader is not None)
            if found:
                self._l1_put(key, value, ttl, estimate_size(value))
                self._log_access(key, "l2")
                self._record(t0)
                return value
        if loader is None:
            self.stats["l3"].misses += 1
            self._log_access(key, "miss")
            self._record(t0)
            return None
        value = self._load_once(key, prefix, loader, ttl, use_l2, token)
        self._log_access(key, "l3")
        self._record(t0)
        return value

    def _log_access(self, key: str, tier: str) -> None:
        if self.access_log is not None:
            self.access_log.append((self._clock(), key, tier))

    def _load_once(self, key, prefix, loader, ttl, use_l2, token=None):
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            # another thread may have filled it while we waited
            entry = self._l1.get(key)
            if entry is not None and entry[1] > self._clock():
                if token:
                    self._l2_unlock(key, token)
                return entry[0]
            if use_l2 and token is None:
                token = self._l2_lock(key)
            if use_l2 and token is False:
                found, value = self._wait_for_fill(key, prefix)
                if found:
                    self._l1_put(key, value, ttl, estimate_size(value))
                    return value
            try:
                t = perf_counter_ns()
                value = loader()
                d = perf_counter_ns() - t
                st = self.stats["l3"]
                st.hits += 1
                st.add(d)
                self.loads += 1
                cost = self._prefix_cost.setdefault(prefix, {"l2_ns": 0, "l2_n": 0, "l3_ns": 0, "l3_n": 0})
                cost["l3_ns"] += d
                cost["l3_n"] += 1
                self._store(key, value, ttl, use_l2, unlock=token or None)
                token = None
            finally:
                if token:
                    self._l2_unlock(key, token)
                with self._lock:
                    if self._key_locks.get(key) is lock and not lock.locked():
                        self._key_locks.pop(key, None)
            return value

    # ---- writes ------------------------------------------------------------------------
    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store in L1 and (unless the prefix skips it) L2, and invalidate other processes' L1."""
        self.set_many({key: value}, ttl_s)

    def set_many(self, items: dict[str, Any], ttl_s: float | None = None) -> None:
        """Pipelined multi-set: validates and encodes all values before storing any."""
        encoded = {}
        for key, value in items.items():
            _check_key(key)
            encoded[key] = self._encode(key, value)
        ttl_default = None if ttl_s is None else self._check_ttl(ttl_s)
        pipe_items = []
        for key, value in items.items():
            pol = self.policy.get(prefix_of(key), {})
            ttl = ttl_default or float(pol.get("ttl_s", self.default_ttl_s))
            self._l1_put(key, value, ttl, max(len(encoded[key]), estimate_size(value)))
            if not pol.get("skip_l2", False):
                pipe_items.append((key, encoded[key], ttl))
        self._l2_write(pipe_items, publish=[k for k in items])

    def invalidate(self, key: str) -> None:
        """Remove `key` from every tier of every process (L3 is the source and is untouched)."""
        _check_key(key)
        self._drop_l1(key)
        if self._l2_ok():
            self._drain_fills()  # so a fill sent earlier cannot land after the delete
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(schema.cache_value(key))
                pipe.publish(schema.CACHE_INVALIDATE, self._inval_msg(key))
                pipe.execute()
            except redis.RedisError as exc:
                self._l2_failed(exc)

    def _check_ttl(self, ttl_s) -> float:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        return float(ttl_s)

    def _encode(self, key: str, value) -> bytes:
        blob = encode(value)
        if len(blob) > self.max_value_bytes:
            raise ValueError(f"value for {key!r} is {len(blob)} bytes serialized, over the limit "
                             f"of {self.max_value_bytes} bytes")
        return blob

    def _store(self, key, value, ttl, use_l2, unlock: str | None = None) -> None:
        if use_l2:
            try:
                blob = self._encode(key, value)
            except (TypeError, ValueError):
                if unlock:
                    self._l2_unlock(key, unlock)
                raise
            self._l1_put(key, value, ttl, max(len(blob), estimate_size(value)))
            self._l2_fill(key, blob, ttl, unlock)
        else:
            size = estimate_size(value)
            if size > self.max_value_bytes:
                raise ValueError(f"value for {key!r} is about {size} bytes, over the limit of "
                                 f"{self.max_value_bytes} bytes")
            self._l1_put(key, value, ttl, size)

    # ---- L2 fill: sent now, acknowledged later -------------------------------------------
    def _l2_fill(self, key: str, blob: bytes, ttl: float, token: str | None) -> None:
        """Release our load lock and store a loaded value in L2: one script sent on this
        thread's fill connection without waiting for its reply. Redis runs it on arrival, so
        other processes see the entry as soon as with a waited call; the caller, who already
        has its value, no longer waits a round trip. Replies are read FILL_ACK_BATCH at a time
        (one recv), before an explicit write or invalidation, and by `flush`; a failed fill is
        counted as an L2 error and logged."""
        if not self._l2_ok():
            return
        try:
            conn = self._fill_conn()
            if len(self._local.pending) >= FILL_ACK_BATCH:
                self._drain_fills()
            conn.send_packed_command([_pack(b"EVALSHA", _SHA[_FILL], b"2", schema.cache_value(key),
                                           _load_lock(key), blob, str(max(1, int(ttl * 1000))),
                                           token or "")], check_health=False)
            self._local.pending.append(key)
        except (redis.RedisError, OSError) as exc:
            self._l2_failed(exc)

    def _fill_conn(self):
        """This thread's fill connection (the pool's settings, no health-check PING: a PING
        would read a pending fill's reply), with the fill script loaded."""
        local = self._local
        conn = getattr(local, "fill", None)
        if conn is None or local.fill_pid != os.getpid():
            pool = self.client.connection_pool
            conn = pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0})
            conn.send_command("SCRIPT", "LOAD", _FILL)
            conn.read_response()
            local.fill, local.fill_pid, local.pending = conn, os.getpid(), []
        return conn

    def _drop_fill_conn(self) -> None:
        conn = getattr(self._local, "fill", None)
        self._local.fill, self._local.pending = None, []
        if conn is not None:
            conn.disconnect()

    def _drain_fills(self) -> None:
        """Read the replies of this thread's sent fills (they have normally arrived already)."""
        pending = getattr(self._local, "pending", None)
        if not pending:
            return
        conn, reload = self._local.fill, False
        try:
            for key in pending:
                try:
                    conn.read_response()
                except redis.ResponseError as exc:       # e.g. OOM, or the script flushed
                    self.stats["l2"].errors += 1
                    log.warning("cache: L2 fill of %r failed (%s)", key, exc)
                    reload |= isinstance(exc, redis.exceptions.NoScriptError)
            pending.clear()
        except (redis.RedisError, OSError) as exc:
            self._l2_failed(exc)
            return
        if reload:
            self._drop_fill_conn()

    def flush(self) -> bool:
        """Wait until this thread's L2 fills are acknowledged; False when one failed on the way."""
        errors = self.stats["l2"].errors
        self._drain_fills()
        return self.stats["l2"].errors == errors

    # ---- L1 ----------------------------------------------------------------------------
    def _l1_put(self, key: str, value, ttl: float, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return            # larger than the whole L1: serve it, do not cache it here
        with self._lock:
            old = self._l1.pop(key, None)
            if old is not None:
                self._l1_bytes -= old[2]
            self._l1[key] = (value, self._clock() + ttl, nbytes)
            self._l1_bytes += nbytes
            while len(self._l1) > self.max_entries or self._l1_bytes > self.max_bytes:
                _, dropped = self._l1.popitem(last=False)
                self._l1_bytes -= dropped[2]
                self.evictions += 1

    def _drop_l1(self, key: str, expired: bool = False) -> bool:
        with self._lock:
            old = self._l1.pop(key, None)
            if old is None:
                return False
            self._l1_bytes -= old[2]
            if expired:
                self.expirations += 1
            return True

    def clear_l1(self) -> int:
        with self._lock:
            n = len(self._l1)
            self._l1.clear()
            self._l1_bytes = 0
            return n

    def resize_l1(self, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
        with self._lock:
            self.max_entries = max_entries
            while len(self._l1) > max_entries:
                _, dropped = self._l1.popitem(last=False)
                self._l1_bytes -= dropped[2]
                self.evictions += 1

    def apply_config(self, ttl_s: float, max_entries: int) -> None:
        """Adopt a runtime settings change (core.runtime_config's cache_ttl_s and
        cache_max_entries), called by the process's settings listener: new entries get the new
        default TTL, L1 is resized at once; the hot path reads plain attributes as before."""
        if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be a positive number, got {ttl_s!r}")
        self.resize_l1(max_entries)
        self.default_ttl_s = float(ttl_s)

    def follow_config(self, live) -> None:
        """Keep TTL and L1 size equal to the runtime settings of `live` (a
        core.runtime_config.LiveConfig): adopt them now and on every change."""
        def adopt(values, changed=None):
            if changed is None or changed & {"cache_ttl_s", "cache_max_entries"}:
                self.apply_config(values["cache_ttl_s"], values["cache_max_entries"])
        adopt(live.values)
        live.on_change(adopt)

    def cleanup(self, cold: bool = False) -> dict:
        """Drop expired L1 entries; with `cold`, also the least recently used half (memory
        pressure). Returns {"expired", "cold", "freed_bytes"}."""
        now = self._clock()
        removed_expired = removed_cold = 0
        freed = 0
        with self._lock:
            for key in [k for k, e in self._l1.items() if e[1] <= now]:
                freed += self._l1.pop(key)[2]
                removed_expired += 1
            if cold:
                target = len(self._l1) // 2
                while len(self._l1) > target:
                    _, dropped = self._l1.popitem(last=False)
                    freed += dropped[2]
                    removed_cold += 1
            self._l1_bytes -= freed
            self.expirations += removed_expired
        return {"expired": removed_expired, "cold": removed_cold, "freed_bytes": freed}

    def __len__(self) -> int:
        return len(self._l1)

    # ---- L2 ----------------------------------------------------------------------------
    def _l2_ok(self) -> bool:
        return self.client is not None and time.monotonic() >= self._l2_down_until

    def _l2_failed(self, exc: Exception) -> None:
        self._drop_fill_conn()   # replies pending on it are lost with the server; start afresh
        self.stats["l2"].errors += 1
        if time.monotonic() >= self._l2_down_until:
            log.warning("cache: Redis unavailable (%s); serving from L1 and the database for %.0fs",
                        exc, L2_BACKOFF_S)
        self._l2_down_until = time.monotonic() + L2_BACKOFF_S

    def _l2_get(self, key: str, prefix: str, lock: bool = False) -> tuple[bool, Any, Any]:
        """(found, value, lock token). With `lock`, a miss also tries the load lock: token is a
        str when taken, False when another process holds it, None when Redis failed."""
        st = self.stats["l2"]
        if not self._l2_ok():
            st.misses += 1
            return False, None, None
        t = perf_counter_ns()
        token = None
        try:
            hot = self._hot()
            if lock:
                # one round trip reads the entry or, when absent, takes the load lock: a miss no
                # longer pays GET then SET NX; a hit costs a few µs more than a GET (bench/cache.py)
                token = f"{self.origin}:{next(self._tokens)}"
                blob = _run_script(hot, _GET_OR_LOCK, (schema.cache_value(key), _load_lock(key)),
                                   (token, LOAD_LOCK_MS))
                if not isinstance(blob, bytes):
                    token, blob = (token if blob == 1 else False), None
                else:
                    token = None
            else:
                blob = hot.get(schema.cache_value(key))
        except redis.RedisError as exc:
            self._l2_failed(exc)
            st.misses += 1
            return False, None, None
        if blob is None:
            st.misses += 1
            return False, None, token
        try:
            value = decode(blob)
        except CorruptEntryError as exc:
            self._corrupt(key, exc)
            st.misses += 1
            return False, None, self._l2_lock(key) if lock else None
        d = perf_counter_ns() - t
        st.hits += 1
        st.add(d)
        cost = self._prefix_cost.setdefault(prefix, {"l2_ns": 0, "l2_n": 0, "l3_ns": 0, "l3_n": 0})
        cost["l2_ns"] += d
        cost["l2_n"] += 1
        return True, value, None

    def _hot(self) -> redis.Redis:
        """This thread's single-connection client on the manager's pool, for the per-request
        commands (GET, the get-or-lock and fill scripts): no pool checkout and release per
        command, ~20 µs of a ~100 µs round trip on the benchmark machine. Created lazily (it
        connects, so callers hold the RedisError handling) and again in a forked child."""
        local = self._local
        hot = getattr(local, "hot", None)
        if hot is None or local.pid != os.getpid():
            hot = redis.Redis(connection_pool=self.client.connection_pool, single_connection_client=True)
            local.hot, local.pid = hot, os.getpid()
        return hot

    def _corrupt(self, key: str, exc: Exception) -> None:
        self.l2_corrupt += 1
        log.warning("cache: corrupt L2 entry %r deleted (%s)", key, exc)
        try:
            self.client.delete(schema.cache_value(key))
        except redis.RedisError as err:
            self._l2_failed(err)

    def _l2_write(self, items: Sequence[tuple[str, bytes, float]], publish: Iterable[str]) -> None:
        publish = list(publish)
        if not (items or publish) or not self._l2_ok():
            return
        self._drain_fills()      # an explicit write lands after this thread's earlier fills
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, blob, ttl in items:
                pipe.set(schema.cache_value(key), blob, px=max(1, int(ttl * 1000)))
            for key in publish:
                pipe.publish(schema.CACHE_INVALIDATE, self._inval_msg(key))
            pipe.execute()
        except redis.RedisError as exc:
            self._l2_failed(exc)

    def get_many(self, keys: Sequence[str], loader: Callable[[list[str]], dict] | None = None,
                 ttl_s: float | None = None) -> dict[str, Any]:
        """Pipelined read of many keys: L1, then one MGET for the rest, then `loader(missing)`
        (returning {key: value}) for what neither tier had. Absent keys are left out."""
        out, missing = {}, []
        for key in keys:
            _check_key(key)
            value = self.get_l1(key, _ABSENT)
            if value is _ABSENT:
                missing.append(key)
            else:
                out[key] = value
        l2_keys = [k for k in missing if not self.policy.get(prefix_of(k), {}).get("skip_l2")]
        if l2_keys and self._l2_ok():
            try:
                blobs = self.client.mget([schema.cache_value(k) for k in l2_keys])
            except redis.RedisError as exc:
                self._l2_failed(exc)
                blobs = [None] * len(l2_keys)
            for key, blob in zip(l2_keys, blobs):
                if blob is None:
                    self.stats["l2"].misses += 1
                    continue
                try:
                    value = decode(blob)
                except CorruptEntryError as exc:
                    self._corrupt(key, exc)
                    self.stats["l2"].misses += 1
                    continue
                self.stats["l2"].hits += 1
                out[key] = value
                pol = self.policy.get(prefix_of(key), {})
                self._l1_put(key, value, float(ttl_s or pol.get("ttl_s", self.default_ttl_s)),
                             estimate_size(value))
        still = [k for k in missing if k not in out]
        if still and loader is not None:
            loaded = loader(still)
            self.stats["l3"].hits += len(loaded)
            self.loads += len(loaded)
            if loaded:
                encoded = {k: self._encode(k, v) for k, v in loaded.items()}
                items = []
                for key, value in loaded.items():
                    pol = self.policy.get(prefix_of(key), {})
                    ttl = float(ttl_s or pol.get("ttl_s", self.default_ttl_s))
                    self._l1_put(key, value, ttl, max(len(encoded[key]), estimate_size(value)))
                    if not pol.get("skip_l2"):
                        items.append((key, encoded[key], ttl))
                self._l2_write(items, publish=())
            out.update(loaded)
        return out

    def _l2_lock(self, key: str):
        """A token when this process may load `key`, False when another process is loading
        it, None when Redis is unavailable (then load without coordination)."""
        if not self._l2_ok():
            return None
        token = uuid.uuid4().hex
        try:
            got = self.client.set(_load_lock(key), token, nx=True, px=LOAD_LOCK_MS)
        except redis.RedisError as exc:
            self._l2_failed(exc)
            return None
        return token if got else False

    def _l2_unlock(self, key: str, token: str) -> None:
        try:
            self.client.eval(_UNLOCK_LUA, 1, _load_lock(key), token)
        except redis.RedisError as exc:
            self._l2_failed(exc)

    def _wait_for_fill(self, key: str, prefix: str) -> tuple[bool, Any]:
        deadline = time.monotonic() + LOAD_LOCK_MS / 1000
        while time.monotonic() < deadline and self._l2_ok():
            found, value, _ = self._l2_get(key, prefix)
            if found:
                return True, value
            time.sleep(0.005)
        return False, None

    # ---- coherence ---------------------------------------------------------------------
    def _inval_msg(self, key: str) -> str:
        return json.dumps({"k": key, "o": self.origin, "t": time.time()})

    def start_invalidation_listener(self, redis_url: str) -> threading.Thread:
        """Subscribe to invalidations in a daemon thread (idempotent)."""
        if self._listener is not None and self._listener.is_alive():
            return self._listener
        self._stop.clear()
        ready = threading.Event()
        self._listener = threading.Thread(target=self._listen, args=(redis_url, ready),
                                          name="cache-invalidation", daemon=True)
        self._listener.start()
        ready.wait(2.0)
        return self._listener

    def stop_invalidation_listener(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=2.0)

    def _listen(self, redis_url: str, ready: threading.Event) -> None:
        first = True
        while not self._stop.is_set():
            try:
                client = schema.connect(redis_url, socket_timeout=None)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(schema.CACHE_INVALIDATE)
                if not first:
                    self.clear_l1()   # invalidations may have been missed while disconnected
                first = False
                ready.set()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg is not None:
                        self._on_invalidation(msg.get("data"))
                pubsub.close()
                client.close()
            except (redis.RedisError, OSError) as exc:
                log.warning("cache: invalidation listener lost Redis (%s); retrying", exc)
                ready.set()
                self._stop.wait(0.5)

    def _on_invalidation(self, raw) -> None:
        try:
            msg = json.loads(raw)
            key = msg["k"]
        except (TypeError, ValueError, KeyError):
            log.warning("cache: malformed invalidation message %r ignored", raw)
            return
        if msg.get("o") != self.origin and self._drop_l1(key):
            self.invalidations += 1

    # ---- statistics, policy ------------------------------------------------------------
    def get_cache_statistics(self) -> dict:
        """Per tier: hits, misses, hit rate, p50/p99 latency (µs), size, evictions; and the
        multi-tier hit rate (requests served without the loader)."""
        l1, l2, l3 = (self.stats[t].summary() for t in _TIERS)
        l1.update(size=len(self._l1), bytes=self._l1_bytes, max_entries=self.max_entries,
                  max_bytes=self.max_bytes, evictions=self.evictions, expirations=self.expirations,
                  invalidations=self.invalidations)
        l2.update(corrupt=self.l2_corrupt, degraded=not self._l2_ok() and self.client is not None,
                  capacity_bytes=self.l2_max_bytes)
        requests = self.stats["l1"].hits + self.stats["l1"].misses
        served = self.stats["l1"].hits + self.stats["l2"].hits
        return {"l1": l1, "l2": l2, "l3": l3, "requests": requests,
                "multitier_hit_rate": served / requests if requests else None,
                "policy": {p: dict(v) for p, v in self.policy.items()}}

    def enable_access_log(self, maxlen: int = 100_000) -> None:
        """Keep the last `maxlen` accesses (t, key, tier) for optimize_cache (off by default:
        it costs ~0.1 µs per access)."""
        from collections import deque
        self.access_log = deque(maxlen=maxlen)

    def reset_statistics(self) -> None:
        self.stats = {t: _TierStats() for t in _TIERS}
        self.evictions = self.expirations = self.invalidations = self.l2_corrupt = 0

    def choose_tiers(self, min_samples: int = 20) -> dict[str, bool]:
        """skip_l2 per prefix from measured mean latencies: skip Redis where the loader was
        faster than a Redis hit. Returns {prefix: skip_l2} for the prefixes decided."""
        decided = {}
        for prefix, c in self._prefix_cost.items():
            if c["l2_n"] >= min_samples and c["l3_n"] >= min_samples:
                skip = c["l3_ns"] / c["l3_n"] < c["l2_ns"] / c["l2_n"]
                self.policy.setdefault(prefix, {})["skip_l2"] = skip
                decided[prefix] = skip
        return decided

    def prefix_costs(self) -> dict[str, dict]:
        return {p: {"l2_mean_us": c["l2_ns"] / c["l2_n"] / 1e3 if c["l2_n"] else None,
                    "l3_mean_us": c["l3_ns"] / c["l3_n"] / 1e3 if c["l3_n"] else None,
                    "l2_n": c["l2_n"], "l3_n": c["l3_n"]} for p, c in self._prefix_cost.items()}

    def load_policy(self) -> None:
        """Adopt the policy and L1 size cache.optimize stored in Redis (best effort)."""
        if not self._l2_ok():
            return
        try:
            stored = schema.read_json_hash(self.client, schema.CACHE_POLICY)
            size = self.client.get(schema.CACHE_L1_SIZE)
        except redis.RedisError as exc:
            self._l2_failed(exc)
            return
        for prefix, pol in stored.items():
            if isinstance(pol, dict):
                self.policy[prefix] = {k: pol[k] for k in ("ttl_s", "skip_l2") if k in pol}
        if size is not None and int(size) > 0:
            self.resize_l1(int(size))


_ABSENT = object()
_UNLOCK_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# KEYS: entry, load lock; ARGV: token, lock ms. The entry's bytes, else 1 (lock taken) or 0 (held).
_GET_OR_LOCK = """local v = redis.call('get', KEYS[1])
if v then return v end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0"""
# KEYS: entry, load lock; ARGV: bytes, ttl ms, token ('' = no lock held). Releases our lock
# first, so a failed SET (OOM) never leaves others waiting for a fill that will not come.
_FILL = """if ARGV[3] ~= '' and redis.call('get', KEYS[2]) == ARGV[3] then redis.call('del', KEYS[2]) end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1"""
_SHA = {lua: hashlib.sha1(lua.encode()).hexdigest() for lua in (_GET_OR_LOCK, _FILL)}


def _pack(*parts: bytes | str) -> bytes:
    """One RESP command in one buffer (redis-py sends a large value as a separate write: one
    more system call, ~20 µs on the benchmark VM)."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


def _run_script(client: redis.Redis, lua: str, keys: Sequence[str], args: Sequence) -> Any:
    """EVALSHA, loading the script once when the server does not know it (first use, restart)."""
    try:
        return client.evalsha(_SHA[lua], len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        client.script_load(lua)
        return client.evalsha(_SHA[lua], len(keys), *keys, *args)


def _load_lock(key: str) -> str:
    return f"{schema.NS}lock:cache:{key}"


# ---- L2 capacity -----------------------------------------------------------------------
def enforce_l2_capacity(client: redis.Redis, max_bytes: int, batch: int = 1000) -> dict:
    """Keep the cache's Redis entries within `max_bytes` (their serialized lengths), deleting
    the idlest first. Returns {"keys", "bytes", "evicted", "evicted_bytes"}."""
    entries = []
    for keys in _batches(client.scan_iter(match=schema.CACHE_VALUE_PREFIX + "*", count=batch), batch):
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(k)
            pipe.object("idletime", k)
        res = pipe.execute(raise_on_error=False)
        for i, k in enumerate(keys):
            size, idle = res[2 * i], res[2 * i + 1]
            if isinstance(size, int) and isinstance(idle, int):
                entries.append((idle, size, k))
    total = sum(e[1] for e in entries)
    evicted = evicted_bytes = 0
    if total > max_bytes:
        entries.sort(reverse=True)   # idlest first
        doomed = []
        for idle, size, k in entries:
            if total - evicted_bytes <= max_bytes:
                break
            doomed.append(k)
            evicted_bytes += size
        for chunk in _batches(iter(doomed), batch):
            client.delete(*chunk)
        evicted = len(doomed)
    return {"keys": len(entries) - evicted, "bytes": total - evicted_bytes, "evicted": evicted,
            "evicted_bytes": evicted_bytes}


def _batches(it, n):
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- coherence measurement -------------------------------------------------------------------
_STALENESS_READER = r"""
import json, sys, time
from core import cache, schema
url, key, updates = sys.argv[1], sys.argv[2], int(sys.argv[3])
cm = cache.CacheManager(schema.connect(url), record_telemetry=False)
cm.start_invalidation_listener(url)
print("ready", flush=True)
seen, stale = -1, []
deadline = time.time() + 30
while time.time() < deadline and len(stale) < updates:
    v = cm.get_cached_data(key)
    if v is not None and v["i"] != seen:
        if seen >= 0:
            stale.append(time.time() - v["t"])
        seen = v["i"]
    time.sleep(0.0005)
print(json.dumps(stale), flush=True)
"""


def measure_staleness(client: redis.Redis, redis_url: str, updates: int = 40, interval_s: float = 0.05,
                      key: str = "coh:staleness") -> list[float]:
    """Cross-process coherence, measured: a reader process keeps `key` in its L1 (polling every
    0.5 ms, invalidation listener on); this process `set`s a new version `updates` times,
    `interval_s` apart. Returns, per update, the seconds from the write until the reader saw it
    (the staleness its L1 copy caused). Fewer values than `updates` when the reader missed some
    within 30 s."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    writer = CacheManager(client, record_telemetry=False)
    writer.set(key, {"i": 0, "t": time.time()})
    child = subprocess.Popen([sys.executable, "-c", _STALENESS_READER, redis_url, key, str(updates)], cwd=root,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": root})
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("staleness reader did not start")
        time.sleep(0.3)                                  # the reader holds version 0 in its L1
        for i in range(1, updates + 1):
            writer.set(key, {"i": i, "t": time.time()})
            time.sleep(interval_s)
        out, _ = child.communicate(timeout=35)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        writer.invalidate(key)
    return json.loads(out.strip().splitlines()[-1])


# ---- range-chunked reads -----------------------------------------------------------------
def block_key(name: str, size: int, block: int, newest: int) -> str:
    """Cache key of block `block` (indices [block*size, (block+1)*size - 1]) of the append-only
    axis `name` whose newest index is `newest`: `name:size:block` once the block is closed
    (every index of it older than `newest`: on an append-only axis it never changes again),
    `name:size:block@newest` for the open block holding `newest`, so an append is a new key,
    never a stale read."""
    closed = (block + 1) * size - 1 < newest
    return f"{name}:{size}:{block}" if closed else f"{name}:{size}:{block}@{newest}"


def read_blocks(cache: CacheManager, name: str, first: int, last: int, size: int, newest: int,
                load: Callable[[int, int], Any]) -> list:
    """Values of the fixed-size blocks covering indices [first, last] (clipped to `newest`) of
    an append-only axis such as day indices, oldest first, each read through `cache` under its
    `block_key` (so with its tiers, statistics and stampede protection).

    `load(lo, hi)` reads indices lo..hi inclusive of one block from the database (hi is never
    past `newest`). Range-chunked caching: overlapping windows share their blocks, so a cold
    start loads each block once instead of each distinct window once, and a new newest index
    reloads only the open block.
    """
    first, last, newest = _index(first, "first"), _index(last, "last"), _index(newest, "newest")
    if type(size) is not int or size < 1:
        raise ValueError(f"block size must be a positive int, got {size!r}")
    if first > last:
        raise ValueError(f"first ({first}) is after last ({last})")
    get = cache.get_cached_data
    return [get(block_key(name, size, b, newest),
                lambda lo=b * size, hi=min((b + 1) * size - 1, newest): load(lo, hi))
            for b in range(first // size, min(last, newest) // size + 1)]   # none when first > newest


def _index(v, label: str) -> int:
    if type(v) is int and v >= 0:          # the common case, cheaply
        return v
    if isinstance(v, np.integer) and v >= 0:
        return int(v)
    raise ValueError(f"{label} must be an index >= 0, got {v!r}")


# ---- optimize_cache --------------------------------------------------------------------
def analyze_access_log(log_rows: Sequence[tuple[float, str, str]]) -> dict:
    """Per prefix from an access log [(t, key, tier)]: requests, hit rate, the median and p90
    interval between requests of the same key, and the working set (distinct keys)."""
    by_prefix: dict[str, dict] = {}
    last_seen: dict[str, float] = {}
    for t, key, tier in log_rows:
        p = by_prefix.setdefault(prefix_of(key), {"requests": 0, "hits": 0, "intervals": [], "keys": set()})
        p["requests"] += 1
        p["hits"] += tier in ("l1", "l2")
        p["keys"].add(key)
        if key in last_seen:
            p["intervals"].append(t - last_seen[key])
        last_seen[key] = t
    out = {}
    for prefix, p in by_prefix.items():
        iv = np.array(p["intervals"]) if p["intervals"] else np.array([])
        out[prefix] = {"requests": p["requests"], "hit_rate": p["hits"] / p["requests"],
                       "working_set": len(p["keys"]),
                       "interval_p50_s": float(np.percentile(iv, 50)) if iv.size else None,
                       "interval_p90_s": float(np.percentile(iv, 90)) if iv.size else None,
                       "repeat_share": iv.size / p["requests"]}
    return out


# Evidence and floors: a handful of accesses says little, and an L1 sized to exactly the
# working set it saw has no room for the next key (seen live: the risk task's two keys shrank
# L1 from 1,000 to 2 entries).
MIN_PREFIX_REQUESTS = 50       # per prefix, before its TTL is tuned
MIN_PROFILE_REQUESTS = 200     # in all, before L1 is resized
MIN_L1_ENTRIES = 64


def recommend(profile: dict, current_ttl: dict[str, float], current_l1: int, default_ttl_s: float,
              max_l1: int, min_ttl_s: float = 1.0, max_ttl_s: float = 3600.0) -> dict:
    """Decisions from an access profile (pure; tests feed it synthetic logs).

    TTL per prefix: cover the p90 re-request interval (twice it, bounded) so a key that is
    re-read is still there, but no longer, so a drifting hot set frees its space. Prefixes
    whose keys are hardly ever re-read keep the default. L1 size: the working set of the
    re-read keys (those are what L1 can hit), bounded by max_l1 and at least MIN_L1_ENTRIES.
    Without enough accesses (MIN_PREFIX_REQUESTS, MIN_PROFILE_REQUESTS) nothing changes.
    """
    ttl = {}
    for prefix, p in profile.items():
        if (p["interval_p90_s"] is None or p["repeat_share"] < 0.05
                or p.get("requests", 0) < MIN_PREFIX_REQUESTS):
            continue
        ttl[prefix] = float(min(max_ttl_s, max(min_ttl_s, 2.0 * p["interval_p90_s"])))
    reread = sum(int(p["working_set"] * min(1.0, p["repeat_share"] * 2)) for p in profile.values())
    enough = sum(p.get("requests", 0) for p in profile.values()) >= MIN_PROFILE_REQUESTS
    l1 = int(min(max_l1, max(MIN_L1_ENTRIES, reread))) if enough else current_l1
    changes = []
    for prefix, v in ttl.items():
        old = current_ttl.get(prefix, default_ttl_s)
        if abs(old - v) / old > 0.1:
            changes.append({"what": f"ttl:{prefix}", "before": old, "after": round(v, 3)})
    if l1 != current_l1 and abs(l1 - current_l1) / current_l1 > 0.1:
        changes.append({"what": "l1_max_entries", "before": current_l1, "after": l1})
    else:
        l1 = current_l1
    return {"ttl_s": ttl, "l1_max_entries": l1, "changes": changes}


def optimize_cache(cache: CacheManager, max_l1: int | None = None) -> dict:
    """Tune TTL per prefix and the L1 size from the manager's access log, and the tier policy
    from the measured costs; apply them and report what changed ("changes": what, before,
    after) with the hit rate the log saw. The effect shows in the traffic that follows:
    cache.optimize compares successive runs, bench/cache.py measures it on a drifting hot set."""
    rows = list(cache.access_log or [])
    profile = analyze_access_log(rows)
    before = cache.get_cache_statistics()
    rec = recommend(profile, {p: v.get("ttl_s", cache.default_ttl_s) for p, v in cache.policy.items()},
                    cache.max_entries, cache.default_ttl_s, max_l1 or 10 * cache.max_entries)
    for prefix, v in rec["ttl_s"].items():
        cache.policy.setdefault(prefix, {})["ttl_s"] = v
    tiers = cache.choose_tiers()
    changes = list(rec["changes"])
    for prefix, skip in tiers.items():
        changes.append({"what": f"skip_l2:{prefix}", "before": None, "after": skip})
    if rec["l1_max_entries"] != cache.max_entries:
        cache.resize_l1(rec["l1_max_entries"])
    cleaned = cache.cleanup()
    if cache.access_log is not None:
        cache.access_log.clear()
    return {"profile": profile, "changes": changes, "policy": {p: dict(v) for p, v in cache.policy.items()},
            "l1_max_entries": cache.max_entries, "cleanup": cleaned,
            "hit_rate_before": before["multitier_hit_rate"], "costs": cache.prefix_costs()}


def publish_statistics(client: redis.Redis, cache: CacheManager, proc: str | None = None,
                       ttl_s: int = 120) -> dict:
    """Write this process's statistics for the Cache page (schema.cache_stats)."""
    stats = cache.get_cache_statistics()
    if cache.access_log:
        stats["profile"] = analyze_access_log(list(cache.access_log))
    proc = proc or f"{socket.gethostname()}:{os.getpid()}"
    client.set(schema.cache_stats(proc), schema.dumps({"t": time.time(), **stats}), ex=ttl_s)
    return stats


def read_statistics(client: redis.Redis) -> dict[str, dict]:
    out = {}
    for key in client.scan_iter(match=schema.cache_stats("*"), count=200):
        try:
            out[key.decode().split("cache:stats:", 1)[1]] = schema.loads(client.get(key))
        except (ValueError, AttributeError, TypeError):
            continue
    return {k: v for k, v in out.items() if isinstance(v, dict)}


def merge_statistics(stats: dict[str, dict]) -> dict:
    """One view of the per-process statistics of `read_statistics` ({proc: stats}).

    Per tier: hits, misses and errors summed, the hit rate of the sums, and p50_us / p99_us the
    highest of the processes' (percentiles of different processes do not combine: the slowest
    process is shown), None when none reported. L1 entries and evictions summed; `requests`
    (L1 hits + misses) and `multitier_hit_rate` (served by L1 or L2 / requests, None without
    requests). Malformed parts count as zero."""
    tiers = {t: {"hits": 0, "misses": 0, "errors": 0, "p50_us": None, "p99_us": None} for t in _TIERS}
    size = evictions = 0
    for st in stats.values():
        for t, agg in tiers.items():
            part = st.get(t) if isinstance(st.get(t), dict) else {}
            for k in ("hits", "misses", "errors"):
                agg[k] += _count(part.get(k))
            for q in ("p50_us", "p99_us"):
                v = part.get(q)
                if isinstance(v, (int, float)) and math.isfinite(v) and (agg[q] is None or v > agg[q]):
                    agg[q] = float(v)
        l1 = st.get("l1") if isinstance(st.get("l1"), dict) else {}
        size += _count(l1.get("size"))
        evictions += _count(l1.get("evictions"))
    for agg in tiers.values():
        total = agg["hits"] + agg["misses"]
        agg["hit_rate"] = agg["hits"] / total if total else None
    requests = tiers["l1"]["hits"] + tiers["l1"]["misses"]
    served = tiers["l1"]["hits"] + tiers["l2"]["hits"]
    return {"tiers": tiers, "l1_size": size, "l1_evictions": evictions, "processes": len(stats),
            "requests": requests, "multitier_hit_rate": served / requests if requests else None}


def _count(v) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else 0
