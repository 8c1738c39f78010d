"""Settings of the smallest Django project that publishes to wshub: one app, SQLite, no admin."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = ["reservas"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "reservas_site.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# websocket_client reads WSHUB_URL (default http://localhost:8080) and WSHUB_API_KEY from the
# environment; set them where the hub is not on this machine or has --api-key.
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"reservas": {"handlers": ["console"], "level": "INFO"}},
}
