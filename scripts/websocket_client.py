"""Publish events to a wshub notification hub from Python (standard library only).

A drop-in replacement for the Go hub's helper: the Spanish coroutines keep their names, signatures,
event types, messages and data keys, and never raise on network errors. An English API adds
targeting, batches, receipts and development tokens. The wire format is docs/PROTOCOL.md.

Configuration, read at every call:

- ``WSHUB_URL``: the hub's base URL (default ``http://localhost:8080``).
- ``WSHUB_API_KEY``: sent as ``Authorization: Bearer <key>`` when set (the hub answers 401 without
  it when it has an API key configured, and 403 to a non-loopback caller when it has none).

Usage, from async code (FastAPI, aiohttp, ...)::

    from websocket_client import enviar_notificacion, notificar_reserva_creada

    ok = await notificar_reserva_creada("r-1", "t-9", "Cenote Azul", "u-42", "Ana", "2026-12-01", 2)
    ok = await enviar_notificacion("alerta", "Mantenimiento a las 22:00", {"minutos": 30})

Usage, from sync code (Django, scripts, Celery tasks)::

    from websocket_client import WshubError, notify, notify_batch, receipt

    answer = notify("reserva_creada", "Nueva reserva", {"reservaId": "7"}, user="42")
    # -> {"success": True, "id": "...", "seq": 12, "recipients": 1}
    answers = notify_batch([{"type": "a"}, {"type": "b", "role": "admin"}])
    receipt(answer["id"])
    try:
        notify("")
    except WshubError as err:
        print(err.status, err.error)       # 400 and the hub's message

``notify_async`` is ``notify`` for coroutines, and ``make_token`` builds HS256 tokens for a hub started
with ``--jwt-secret`` (development and tests only: real tokens come from your auth server).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional, Union

__all__ = [
    "WshubError",
    "enviar_notificacion",
    "make_token",
    "notificar_destino_creado",
    "notificar_guia_creado",
    "notificar_recomendacion_creada",
    "notificar_reserva_creada",
    "notificar_servicio_contratado",
    "notificar_servicio_creado",
    "notificar_tour_creado",
    "notificar_usuario_inicio_sesion",
    "notificar_usuario_registrado",
    "notify",
    "notify_async",
    "notify_batch",
    "receipt",
]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8080"
DEFAULT_TIMEOUT = 3.0

Target = Union[str, list[str], None]


class WshubError(Exception):
    """The hub refused a request, or could not be reached.

    ``status`` is the HTTP status code, or ``None`` when no HTTP answer came (connection refused,
    timeout, DNS failure). ``error`` is the hub's ``{"error": ...}`` text, or a description.
    """

    def __init__(self, status: Optional[int], error: str):
        super().__init__(f"wshub: {error}" if status is None else f"wshub HTTP {status}: {error}")
        self.status = status
        self.error = error


def _request(
    method: str,
    path: str,
    body: Any = None,
    *,
    url: Optional[str],
    api_key: Optional[str],
    timeout: float,
) -> Any:
    """Send one request to the hub and return its parsed JSON answer; raise WshubError otherwise."""
    base = (url or os.environ.get("WSHUB_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("WSHUB_API_KEY")
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
        reason = getattr(err, "reason", err)
        raise WshubError(None, f"cannot reach {base}: {reason}") from err
    try:
        answer = json.loads(raw.decode("utf-8")) if raw else None
    except ValueError:
        answer = None
    if status != 200:
        if isinstance(answer, dict) and "error" in answer:
            error = str(answer["error"])
        else:
            error = raw.decode("utf-8", "replace").strip() or "no error text"
        raise WshubError(status, error)
    if answer is None:
        raise WshubError(status, "the answer is not JSON")
    return answer


def notify(
    type: str,
    message: str = "",
    data: Any = None,
    *,
    user: Target = None,
    role: Target = None,
    channel: Target = None,
    idempotency_key: Optional[str] = None,
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """Publish one event and return the hub's answer ``{"success", "id", "seq", "recipients"}``.

    Without ``user``, ``role`` or ``channel`` the event is broadcast; each target takes one name or
    a list. ``idempotency_key`` makes a retried publish count once. Raises WshubError on any answer
    other than 200 and when the hub cannot be reached.
    """
    event: dict[str, Any] = {"type": type, "message": message, "data": {} if data is None else data}
    for field, value in (("user", user), ("role", role), ("channel", channel)):
        if value is not None:
            event[field] = value
    if idempotency_key is not None:
        event["idempotency_key"] = idempotency_key
    return _request("POST", "/notify", event, url=url, api_key=api_key, timeout=timeout)


async def notify_async(
    type: str,
    message: str = "",
    data: Any = None,
    *,
    user: Target = None,
    role: Target = None,
    channel: Target = None,
    idempotency_key: Optional[str] = None,
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """``notify`` for coroutines: the blocking request runs in a worker thread."""
    return await asyncio.to_thread(
        notify,
        type,
        message,
        data,
        user=user,
        role=role,
        channel=channel,
        idempotency_key=idempotency_key,
        url=url,
        api_key=api_key,
        timeout=timeout,
    )


def notify_batch(
    events: list,
    *,
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list:
    """Publish several events in order, all or nothing, and return one answer per event.

    Each event is a dict in the ``POST /notify`` shape (``type``, optional ``message``, ``data``,
    ``user``, ``role``, ``channel``, ``idempotency_key``). Raises WshubError as ``notify`` does; a
    400 names the index of the event at fault.
    """
    return _request("POST", "/notify", list(events), url=url, api_key=api_key, timeout=timeout)


def receipt(
    event_id: str,
    *,
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """Return what the hub kept about a published event (``GET /events/{id}``).

    The answer is ``{"event": {...}, "targets": [...]}``: the event as delivered (``id``, ``type``,
    ``message``, ``data``, ``timestamp``, ``seq``, ``from``) and the streams it was published to.
    Raises WshubError with status 404 once the event has left the hub's history.
    """
    path = "/events/" + urllib.parse.quote(event_id, safe="")
    return _request("GET", path, url=url, api_key=api_key, timeout=timeout)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_token(
    secret: str,
    sub: str,
    role: Optional[str] = None,
    ttl: int = 3600,
    roles: Optional[list[str]] = None,
    channels: Optional[list[str]] = None,
) -> str:
    """Build an HS256 JWT for a hub started with ``--jwt-secret``. For development and tests only.

    Claims: ``sub``, ``iat``, ``exp`` (``iat + ttl``; a negative ``ttl`` gives an expired token), and
    ``role``, ``roles``, ``channels`` when given. Production tokens belong to your auth server.
    """
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
    for name, value in (("role", role), ("roles", roles), ("channels", channels)):
        if value is not None:
            claims[name] = value
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode("utf-8")) for part in (header, claims)
    )
    signature = hmac.new(secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{_b64url(signature.digest())}"


async def enviar_notificacion(tipo: str, mensaje: str, data: Optional[dict] = None) -> bool:
    """Broadcast ``{"type": tipo, "message": mensaje, "data": data}`` to every connected client.

    Returns True when the hub answered 200, False otherwise (the cause is logged as a warning):
    a notification must never break the request that triggered it.
    """
    try:
        await notify_async(tipo, mensaje, data)
    except WshubError as err:
        logger.warning("notification %r not sent: %s", tipo, err)
        return False
    return True


async def notificar_usuario_registrado(usuario_id: str, nombre: str, email: str, rol: str) -> bool:
    """A new user signed up."""
    return await enviar_notificacion(
        "usuario_registrado",
        f"Nuevo usuario registrado: {nombre}",
        {"userId": usuario_id, "nombre": nombre, "email": email, "rol": rol},
    )


async def notificar_usuario_inicio_sesion(usuario_id: str, nombre: str, rol: str) -> bool:
    """A user logged in."""
    return await enviar_notificacion(
        "usuario_inicio_sesion",
        f"{nombre} ha iniciado sesión",
        {"userId": usuario_id, "nombre": nombre, "rol": rol},
    )


async def notificar_reserva_creada(
    reserva_id: str,
    tour_id: str,
    tour_nombre: str,
    usuario_id: str,
    usuario_nombre: str,
    fecha: str,
    personas: int,
) -> bool:
    """A tour was booked."""
    return await enviar_notificacion(
        "reserva_creada",
        f"Nueva reserva para {tour_nombre} - {personas} persona(s)",
        {
            "reservaId": reserva_id,
            "tourId": tour_id,
            "tourNombre": tour_nombre,
            "usuarioId": usuario_id,
            "usuarioNombre": usuario_nombre,
            "fecha": fecha,
            "personas": personas,
        },
    )


async def notificar_servicio_contratado(
    contratacion_id: str,
    servicio_id: str,
    servicio_nombre: str,
    usuario_id: str,
    usuario_nombre: str,
) -> bool:
    """A service was hired."""
    return await enviar_notificacion(
        "servicio_contratado",
        f"Servicio contratado: {servicio_nombre}",
        {
            "contratacionId": contratacion_id,
            "servicioId": servicio_id,
            "servicioNombre": servicio_nombre,
            "usuarioId": usuario_id,
            "usuarioNombre": usuario_nombre,
        },
    )


async def notificar_recomendacion_creada(
    recomendacion_id: str,
    titulo: str,
    usuario_id: str,
    usuario_nombre: str,
    calificacion: int,
) -> bool:
    """A user posted a recommendation with a 1-5 star rating."""
    return await enviar_notificacion(
        "recomendacion_creada",
        f"Nueva recomendación: {titulo} (⭐ {calificacion}/5)",
        {
            "recomendacionId": recomendacion_id,
            "titulo": titulo,
            "usuarioId": usuario_id,
            "usuarioNombre": usuario_nombre,
            "calificacion": calificacion,
        },
    )


async def notificar_tour_creado(tour_id: str, nombre: str, destino: str, precio: float) -> bool:
    """A tour was added to the catalogue."""
    return await enviar_notificacion(
        "tour_creado",
        f"Nuevo tour disponible: {nombre}",
        {"tourId": tour_id, "nombre": nombre, "destino": destino, "precio": precio},
    )


async def notificar_servicio_creado(servicio_id: str, nombre: str, tipo: str, precio: float) -> bool:
    """A service was added to the catalogue."""
    return await enviar_notificacion(
        "servicio_creado",
        f"Nuevo servicio disponible: {nombre}",
        {"servicioId": servicio_id, "nombre": nombre, "tipo": tipo, "precio": precio},
    )


async def notificar_destino_creado(destino_id: str, nombre: str, pais: str, estado: str) -> bool:
    """A destination was added."""
    return await enviar_notificacion(
        "destino_creado",
        f"Nuevo destino agregado: {nombre}, {estado}",
        {"destinoId": destino_id, "nombre": nombre, "pais": pais, "estado": estado},
    )


async def notificar_guia_creado(guia_id: str, nombre: str, especialidad: str, idiomas: list) -> bool:
    """A tour guide was added."""
    return await enviar_notificacion(
        "guia_creado",
        f"Nuevo guía disponible: {nombre} - {especialidad}",
        {"guiaId": guia_id, "nombre": nombre, "especialidad": especialidad, "idiomas": idiomas},
    )
