"""gunicorn entry point: `gunicorn wsgi:server`."""
from app.main import create_app

app = create_app()
server = app.server
