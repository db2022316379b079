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



def post_fork(server, worker):
    """Each web worker keeps itself registered so the metrics collector reads its CPU and RSS."""
    from core import procs
    procs.keep_registered(_s.redis_url, "web")


def when_ready(server):
    from core import procs
    procs.keep_registered(_s.redis_url, "web")
