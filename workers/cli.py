"""Operator command line: `python -m workers.cli halt --reason TEXT | resume [--reason TEXT] | state`.

Talks to Redis directly (settings.redis_url), so it works while the web app is down. Prints
one JSON object; exit status 0 on success (a resume when not halted is a no-op: 0 with a
message), 1 when Redis is unreachable, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys

import redis

from core import emergency, safety, schema
from core.settings import get_settings


def _user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container: still auditable by source
        return "cli:unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers.cli", description="Trading state control")
    sub = p.add_subparsers(dest="command", required=True)
    halt = sub.add_parser("halt", help="emergency stop: halt trading and liquidate")
    halt.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    resume = sub.add_parser("resume", help="resume trading after a halt")
    resume.add_argument("--reason", default="resumed from the CLI")
    sub.add_parser("state", help="print the trading state")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    client = schema.connect(get_settings().redis_url)
    try:
        if args.command == "halt":
            r = emergency.emergency_stop(client, args.reason, _user(), "cli")
            out = {"state": safety.HALTED, "from_state": r["from_state"], "audit_id": r["audit_id"]}
        elif args.command == "resume":
            r = emergency.resume_trading(client, _user(), "cli", args.reason)
            out = {"state": r["to_state"], "changed": r["changed"], "message": r["message"]}
        else:
            out = {"state": safety.read_state(client), "last_transition": safety.read_meta(client) or None}
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(json.dumps({"error": f"Redis unreachable: {exc}"}), file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
