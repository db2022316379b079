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
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
