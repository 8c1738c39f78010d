#!/usr/bin/env python3
"""Send one example of each event type to a running wshub and report each result.

Open the hub's test page (http://localhost:8080/) or any /ws client first to watch them arrive.

    python3 scripts/test_websocket.py                       # hub at http://localhost:8080
    WSHUB_URL=http://127.0.0.1:9000 python3 scripts/test_websocket.py

Exits 1 if any event was not accepted.
"""

import asyncio
import logging
import sys

from websocket_client import (
    notificar_destino_creado,
    notificar_guia_creado,
    notificar_recomendacion_creada,
    notificar_reserva_creada,
    notificar_servicio_contratado,
    notificar_servicio_creado,
    notificar_tour_creado,
    notificar_usuario_inicio_sesion,
    notificar_usuario_registrado,
)

PAUSE_SECONDS = 0.5

# (label, convenience function, its arguments)
EXAMPLES = [
    ("Usuario registrado", notificar_usuario_registrado, ("u-101", "María González", "maria@example.com", "cliente")),
    ("Inicio de sesión", notificar_usuario_inicio_sesion, ("u-101", "María González", "cliente")),
    (
        "Reserva creada",
        notificar_reserva_creada,
        ("r-2001", "t-15", "Tour Chichén Itzá", "u-101", "María González", "2026-12-15", 4),
    ),
    (
        "Servicio contratado",
        notificar_servicio_contratado,
        ("c-301", "s-7", "Traslado aeropuerto - hotel", "u-101", "María González"),
    ),
    (
        "Recomendación creada",
        notificar_recomendacion_creada,
        ("rec-88", "Cenote Ik Kil, imperdible", "u-101", "María González", 5),
    ),
    ("Tour creado", notificar_tour_creado, ("t-16", "Tour Tulum y Cobá", "Tulum", 1899.0)),
    ("Servicio creado", notificar_servicio_creado, ("s-8", "Guía privado bilingüe", "guia", 1200.0)),
    ("Destino creado", notificar_destino_creado, ("d-12", "Bacalar", "México", "Quintana Roo")),
    ("Guía creado", notificar_guia_creado, ("g-5", "Carlos Ramírez", "Arqueología maya", ["español", "inglés", "maya"])),
]


async def main() -> int:
    """Send the examples one by one, pausing between them; return the number that failed."""
    failed = 0
    for index, (label, function, args) in enumerate(EXAMPLES):
        if index:
            await asyncio.sleep(PAUSE_SECONDS)
        ok = await function(*args)
        failed += not ok
        print(f"{'✅' if ok else '❌'} {label}")
    print(f"\n{len(EXAMPLES) - failed}/{len(EXAMPLES)} notificaciones enviadas")
    return failed


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s: %(message)s")
    sys.exit(1 if asyncio.run(main()) else 0)
