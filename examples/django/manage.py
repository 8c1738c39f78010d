#!/usr/bin/env python3
"""Django's command-line utility for the wshub example project.

    cd examples/django
    python3 manage.py migrate                      # creates db.sqlite3 (or $DJANGO_DB)
    python3 manage.py notify_hub aviso "Hola" --role admin
    python3 manage.py shell -c "from reservas.models import Tour; Tour.objects.create(nombre='Cenote', destino='Bacalar', precio=1250)"

The hub is found through WSHUB_URL (default http://localhost:8080) and WSHUB_API_KEY.
"""

import os
import sys
from pathlib import Path

# The project uses the repository's one-file helper; in your project, copy
# scripts/websocket_client.py next to manage.py instead.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reservas_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
