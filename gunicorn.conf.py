"""gunicorn settings: bind from HOST/PORT via the settings module."""
from core.settings import get_settings

_s = get_settings()
bind = f"{_s.host}:{_s.port}"
workers = 2
threads = 4
worker_class = "gthread"
timeout = 30
graceful_timeout = 10
control_socket_disable = True
accesslog = None
errorlog = "-"



def post_worker_init(worker):
    """Each web worker keeps itself registered so the metrics collector reads its CPU and RSS.
    Not in post_fork: a thread started there races the worker's import of the app (partially
    initialised stdlib modules, seen as 'unknown encoding: idna')."""
    from core import procs
    procs.keep_registered(_s.redis_url, "web")


def when_ready(server):
    from core import procs
    procs.keep_registered(_s.redis_url, "web")
    _ensure_admin()


def _ensure_admin():
    """First start: create `admin` with CONSOLE_ADMIN_PASSWORD, or a random password printed once."""
    import redis
    from core import schema, users
    try:
        generated = users.ensure_admin(schema.connect(_s.redis_url), _s.admin_password or None)
    except redis.RedisError as exc:
        print(f"admin user not checked (Redis unreachable: {exc})", flush=True)
        return
    if generated:
        print("=" * 72 + f"\nCreated user 'admin' with password: {generated}\n"
              "(shown once; set CONSOLE_ADMIN_PASSWORD to choose it)\n" + "=" * 72, flush=True)
