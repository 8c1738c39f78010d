"""FastAPI endpoints that notify wshub after they change data.

Copy scripts/websocket_client.py next to this file (or put scripts/ on PYTHONPATH), then:
    WSHUB_URL=http://localhost:8080 uvicorn fastapi_app:app --reload

The Spanish helpers never raise: a hub that is down costs a logged warning, not a failed request.
The English API (``notify_async``) raises WshubError and can target users, roles and channels.
"""

import logging
from uuid import uuid4

from fastapi import FastAPI
from pydantic import BaseModel

from websocket_client import WshubError, notificar_reserva_creada, notify_async

logger = logging.getLogger(__name__)
app = FastAPI()


class NuevaReserva(BaseModel):
    tour_id: str
    tour_nombre: str
    usuario_id: str
    usuario_nombre: str
    fecha: str
    personas: int


@app.post("/reservas")
async def crear_reserva(reserva: NuevaReserva) -> dict:
    reserva_id = str(uuid4())  # save the booking here
    await notificar_reserva_creada(
        reserva_id,
        reserva.tour_id,
        reserva.tour_nombre,
        reserva.usuario_id,
        reserva.usuario_nombre,
        reserva.fecha,
        reserva.personas,
    )
    try:
        # Only the customer's own tabs (JWT sub == usuario_id) get this one.
        await notify_async(
            "reserva_confirmada",
            f"Tu reserva para {reserva.tour_nombre} está confirmada",
            {"reservaId": reserva_id},
            user=reserva.usuario_id,
            idempotency_key=f"reserva-confirmada-{reserva_id}",
        )
    except WshubError as err:
        logger.warning("confirmation not pushed: %s", err)
    return {"id": reserva_id}
