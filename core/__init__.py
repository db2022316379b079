"""Pure domain and compute: no dash, no celery imports here."""
