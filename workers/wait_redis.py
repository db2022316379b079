"""Block until the configured Redis answers (so Procfile entries start in order)."""
from __future__ import annotations

import sys

from core import redis_server
from core.settings import get_settings


def main() -> int:
    url = get_settings().redis_url
    try:
        redis_server.wait_ready(url, timeout_s=30.0)
    except TimeoutError as exc:
        print(f"wait_redis: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
