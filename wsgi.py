"""gunicorn entry point: `gunicorn wsgi:server`."""
from app.main import create_app

app = create_app()
server = app.server

# Dash registers its component bundles while rendering the index page. Under several gunicorn
# workers, a worker that never rendered it refuses those bundles ("not a registered library")
# when the browser fetches them from it, so each worker renders the index once at import.
with server.test_client() as _client:
    _client.get("/")
