"""Procfile entry: run the private Redis server, or stand by when REDIS_URL points elsewhere."""
from __future__ import annotations

import os
import signal
import sys

from core import redis_server
from core.settings import get_settings


def main() -> None:
    settings = get_settings()
    if settings.redis_external:
        print(f"using external Redis at {settings.redis_url}; no private server started", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
        return
    args = redis_server.server_args(settings.redis_port, settings.var_dir / "redis")
    print(f"starting private Redis on 127.0.0.1:{settings.redis_port} (data in {settings.var_dir / 'redis'})",
          flush=True)
    _register_after_start()
    os.execv(args[0], args)


def _register_after_start() -> None:
    """Register this pid (exec keeps it) as the console's Redis once the server answers.
    A forked child does it because exec replaces this process (a thread would die with it)."""
    if os.fork() == 0:
        try:
            from core import procs
            settings = get_settings()
            redis_server.wait_ready(settings.redis_url, timeout_s=30.0)
            procs.keep_registered(settings.redis_url, "redis", pid=os.getppid(), blocking=True)
        finally:
            os._exit(0)


if __name__ == "__main__":
    main()
