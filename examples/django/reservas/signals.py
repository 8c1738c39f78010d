"""Django signal handlers that notify wshub when models are saved.

Imported from ``ReservasConfig.ready()`` (apps.py); scripts/websocket_client.py is on the path
(manage.py puts it there; in your project, copy the file). Set WSHUB_URL (default
http://localhost:8080) and WSHUB_API_KEY if the hub has one.

Signals run in synchronous code, so these use the sync ``notify``; ``transaction.on_commit`` sends
the event only once the row is really saved (never for a rolled-back transaction).
"""

import logging

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from websocket_client import WshubError, notify

from .models import Reserva, Tour

logger = logging.getLogger(__name__)


def publish_on_commit(type_: str, message: str, data: dict, **targets) -> None:
    """Publish after the current transaction commits; log, never raise, if the hub refuses."""

    def send() -> None:
        try:
            notify(type_, message, data, **targets)
        except WshubError as err:
            logger.warning("wshub: %s not sent: %s", type_, err)

    transaction.on_commit(send)


@receiver(post_save, sender=Tour)
def tour_creado(sender, instance: Tour, created: bool, **kwargs) -> None:
    if created:
        publish_on_commit(
            "tour_creado",
            f"Nuevo tour disponible: {instance.nombre}",
            {"tourId": str(instance.pk), "nombre": instance.nombre, "destino": instance.destino,
             "precio": float(instance.precio)},
        )


@receiver(post_save, sender=Reserva)
def reserva_creada(sender, instance: Reserva, created: bool, **kwargs) -> None:
    if created:
        # The staff dashboards (role "admin") and the customer's own tabs.
        publish_on_commit(
            "reserva_creada",
            f"Nueva reserva para {instance.tour.nombre} - {instance.personas} persona(s)",
            {"reservaId": str(instance.pk), "tourId": str(instance.tour_id), "personas": instance.personas},
            role="admin",
            user=str(instance.usuario_id),
        )
