"""End-to-end tests of scripts/websocket_client.py against a real wshub process.

Each test starts the hub binary named by ``WSHUB_BIN`` (default ``target/debug/wshub``, relative to
the repository root) on a free loopback port, waits for ``GET /health``, connects WebSocket clients
(tests/python/ws_client.py) and publishes with the helper; tearDown kills the hub.

Run from the repository root after ``cargo build``:
    python3 -m unittest discover -s tests/python -v
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from datetime import datetime
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import websocket_client as wc  # noqa: E402
from ws_client import ConnectionClosed, WebSocket  # noqa: E402

HUB_START_TIMEOUT = 10.0
JWT_SECRET = "test-secret-for-python-tests"
API_KEY = "test-api-key-for-python-tests"

# One call per convenience function: (function, arguments, type, message, data).
CONVENIENCE_CASES = [
    (
        wc.notificar_usuario_registrado,
        ("u-1", "Ana López", "ana@example.com", "cliente"),
        "usuario_registrado",
        "Nuevo usuario registrado: Ana López",
        {"userId": "u-1", "nombre": "Ana López", "email": "ana@example.com", "rol": "cliente"},
    ),
    (
        wc.notificar_usuario_inicio_sesion,
        ("u-1", "Ana López", "cliente"),
        "usuario_inicio_sesion",
        "Ana López ha iniciado sesión",
        {"userId": "u-1", "nombre": "Ana López", "rol": "cliente"},
    ),
    (
        wc.notificar_reserva_creada,
        ("r-7", "t-3", "Cenote Azul", "u-1", "Ana López", "2026-12-01", 3),
        "reserva_creada",
        "Nueva reserva para Cenote Azul - 3 persona(s)",
        {
            "reservaId": "r-7",
            "tourId": "t-3",
            "tourNombre": "Cenote Azul",
            "usuarioId": "u-1",
            "usuarioNombre": "Ana López",
            "fecha": "2026-12-01",
            "personas": 3,
        },
    ),
    (
        wc.notificar_servicio_contratado,
        ("c-9", "s-2", "Traslado al aeropuerto", "u-1", "Ana López"),
        "servicio_contratado",
        "Servicio contratado: Traslado al aeropuerto",
        {
            "contratacionId": "c-9",
            "servicioId": "s-2",
            "servicioNombre": "Traslado al aeropuerto",
            "usuarioId": "u-1",
            "usuarioNombre": "Ana López",
        },
    ),
    (
        wc.notificar_recomendacion_creada,
        ("rec-4", "Atardecer en Holbox", "u-1", "Ana López", 5),
        "recomendacion_creada",
        "Nueva recomendación: Atardecer en Holbox (⭐ 5/5)",
        {
            "recomendacionId": "rec-4",
            "titulo": "Atardecer en Holbox",
            "usuarioId": "u-1",
            "usuarioNombre": "Ana López",
            "calificacion": 5,
        },
    ),
    (
        wc.notificar_tour_creado,
        ("t-3", "Cenote Azul", "Bacalar", 1250.5),
        "tour_creado",
        "Nuevo tour disponible: Cenote Azul",
        {"tourId": "t-3", "nombre": "Cenote Azul", "destino": "Bacalar", "precio": 1250.5},
    ),
    (
        wc.notificar_servicio_creado,
        ("s-2", "Traslado al aeropuerto", "transporte", 450.0),
        "servicio_creado",
        "Nuevo servicio disponible: Traslado al aeropuerto",
        {"servicioId": "s-2", "nombre": "Traslado al aeropuerto", "tipo": "transporte", "precio": 450.0},
    ),
    (
        wc.notificar_destino_creado,
        ("d-5", "Bacalar", "México", "Quintana Roo"),
        "destino_creado",
        "Nuevo destino agregado: Bacalar, Quintana Roo",
        {"destinoId": "d-5", "nombre": "Bacalar", "pais": "México", "estado": "Quintana Roo"},
    ),
    (
        wc.notificar_guia_creado,
        ("g-8", "Carlos Pérez", "buceo", ["español", "inglés"]),
        "guia_creado",
        "Nuevo guía disponible: Carlos Pérez - buceo",
        {"guiaId": "g-8", "nombre": "Carlos Pérez", "especialidad": "buceo", "idiomas": ["español", "inglés"]},
    ),
]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_event(frame: dict) -> bool:
    """Notifications, as opposed to the hub's ``hub:*`` control messages."""
    return not frame["type"].startswith("hub:")


class HubTestCase(unittest.TestCase):
    """Starts a hub with HUB_ARGS before each test and kills it after; points the helper at it."""

    HUB_ARGS: list[str] = []

    def setUp(self) -> None:
        binary = Path(os.environ.get("WSHUB_BIN", "target/debug/wshub"))
        if not binary.is_absolute():
            binary = ROOT / binary
        if not binary.exists():
            self.fail(f"hub binary {binary} not found: run `cargo build` or set WSHUB_BIN")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.hub = subprocess.Popen(
            [str(binary), "--addr", f"127.0.0.1:{self.port}", *self.HUB_ARGS],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_health()
        env = mock.patch.dict(os.environ, {"WSHUB_URL": self.base_url})
        env.start()
        self.addCleanup(env.stop)
        os.environ.pop("WSHUB_API_KEY", None)

    def tearDown(self) -> None:
        self.hub.kill()
        self.hub.wait()
        self.log.close()

    def _wait_for_health(self) -> None:
        deadline = time.monotonic() + HUB_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                self.fail(f"the hub exited with {self.hub.returncode}:\n{self._hub_output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:  # refused while the hub starts, or an HTTP error (URLError is an OSError)
                pass
            time.sleep(0.05)
        self.hub.kill()
        self.fail(f"GET /health did not answer 200 within {HUB_START_TIMEOUT}s:\n{self._hub_output()}")

    def _hub_output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def connect(self, query: str = "") -> tuple[WebSocket, dict]:
        """Open a WebSocket to the hub; return it with its first frame, which must be hub:connected."""
        ws = WebSocket(f"ws://127.0.0.1:{self.port}/ws{query}")
        self.addCleanup(ws.close)
        hello = ws.recv_json()
        self.assertEqual(hello["type"], "hub:connected", hello)
        return ws, hello

    def next_event(self, ws: WebSocket) -> dict:
        """The next notification on ``ws``, skipping control messages."""
        while True:
            frame = ws.recv_json()
            if is_event(frame):
                return frame

    def assert_stamped(self, event: dict) -> None:
        """The hub added a non-empty ``id`` and an RFC 3339 UTC ``timestamp``."""
        self.assertIsInstance(event["id"], str)
        self.assertTrue(event["id"])
        self.assertTrue(event["timestamp"].endswith("Z"), event["timestamp"])
        datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))


class BroadcastTests(HubTestCase):
    """The helper against a hub with no authentication: everything is a broadcast."""

    def test_each_convenience_function_delivers_its_event_to_a_client(self) -> None:
        ws, _ = self.connect()
        for function, args, type_, message, data in CONVENIENCE_CASES:
            with self.subTest(function=function.__name__):
                self.assertIs(asyncio.run(function(*args)), True)
                event = self.next_event(ws)
                self.assertEqual(event["type"], type_)
                self.assertEqual(event["message"], message)
                self.assertEqual(event["data"], data)
                self.assertEqual(event["channel"], "broadcast")
                self.assert_stamped(event)

    def test_enviar_notificacion_without_data_sends_an_empty_object(self) -> None:
        ws, _ = self.connect()
        self.assertIs(asyncio.run(wc.enviar_notificacion("test", "Hola mundo")), True)
        event = self.next_event(ws)
        self.assertEqual((event["type"], event["message"], event["data"]), ("test", "Hola mundo", {}))

    def test_enviar_notificacion_returns_false_and_warns_on_a_400(self) -> None:
        with self.assertLogs("websocket_client", "WARNING") as logs:
            self.assertIs(asyncio.run(wc.enviar_notificacion("", "sin tipo")), False)
        self.assertIn("400", logs.output[0])

    def test_notify_returns_the_event_id_and_recipient_count(self) -> None:
        ws, _ = self.connect()
        answer = wc.notify("alerta", "Mantenimiento", {"minutos": 30})
        self.assertIs(answer["success"], True)
        self.assertEqual(answer["recipients"], 1)
        self.assertIsInstance(answer["seq"], int)
        event = self.next_event(ws)
        self.assertEqual(event["id"], answer["id"])
        self.assertEqual(event["seq"], answer["seq"])
        self.assertEqual(event["data"], {"minutos": 30})

    def test_notify_async_returns_the_same_answer_shape(self) -> None:
        self.connect()
        answer = asyncio.run(wc.notify_async("alerta", "Mantenimiento"))
        self.assertEqual(answer["recipients"], 1)
        self.assertIsInstance(answer["id"], str)

    def test_notify_batch_answers_and_delivers_in_order(self) -> None:
        ws, _ = self.connect()
        events = [{"type": "paso", "message": str(i), "data": {"i": i}} for i in range(5)]
        answers = wc.notify_batch(events)
        self.assertEqual(len(answers), 5)
        self.assertEqual(len({a["id"] for a in answers}), 5)
        seqs = [a["seq"] for a in answers]
        self.assertEqual(seqs, sorted(seqs))
        received = [self.next_event(ws) for _ in events]
        self.assertEqual([e["message"] for e in received], ["0", "1", "2", "3", "4"])
        self.assertEqual([e["id"] for e in received], [a["id"] for a in answers])

    def test_a_bad_event_raises_wshub_error_with_the_hub_error_text(self) -> None:
        for bad_type in ("", "hub:fake"):
            with self.subTest(type=bad_type):
                with self.assertRaises(wc.WshubError) as caught:
                    wc.notify(bad_type, "x")
                self.assertEqual(caught.exception.status, 400)
                self.assertIn("type", caught.exception.error)

    def test_a_bad_batch_raises_naming_the_index_and_publishes_nothing(self) -> None:
        ws, _ = self.connect()
        with self.assertRaises(wc.WshubError) as caught:
            wc.notify_batch([{"type": "ok"}, {"message": "sin tipo"}])
        self.assertEqual(caught.exception.status, 400)
        self.assertIn("1", caught.exception.error)
        wc.notify("despues")
        self.assertEqual(self.next_event(ws)["type"], "despues")

    def test_an_unreachable_hub_raises_wshub_error_without_status(self) -> None:
        with self.assertRaises(wc.WshubError) as caught:
            wc.notify("x", url=f"http://127.0.0.1:{free_port()}", timeout=1)
        self.assertIsNone(caught.exception.status)

    def test_receipt_describes_a_kept_event_and_raises_404_for_an_unknown_one(self) -> None:
        answer = wc.notify("alerta", "Mantenimiento")
        kept = wc.receipt(answer["id"])
        self.assertEqual(kept["event"]["id"], answer["id"])
        self.assertEqual(kept["event"]["type"], "alerta")
        self.assertEqual(kept["targets"], ["broadcast"])
        with self.assertRaises(wc.WshubError) as caught:
            wc.receipt("no-such-event")
        self.assertEqual(caught.exception.status, 404)


class TokenTests(HubTestCase):
    """make_token and targeting against a hub started with --jwt-secret."""

    HUB_ARGS = ["--jwt-secret", JWT_SECRET]

    def test_a_token_from_make_token_is_accepted_and_names_the_user(self) -> None:
        token = wc.make_token(JWT_SECRET, "ana", role="admin")
        _, hello = self.connect(f"?token={token}")
        self.assertEqual(hello["user"], "ana")
        self.assertEqual(hello["role"], "admin")
        self.assertIn("user:ana", hello["channels"])
        self.assertIn("role:admin", hello["channels"])

    def test_a_token_signed_with_another_secret_is_refused_with_4001(self) -> None:
        self.assert_refused(wc.make_token("not-the-secret", "ana"))

    def test_an_expired_token_is_refused_with_4001(self) -> None:
        self.assert_refused(wc.make_token(JWT_SECRET, "ana", ttl=-120))

    def assert_refused(self, token: str) -> None:
        """The hub closes the connection with 4001, possibly after a hub:error frame."""
        ws = WebSocket(f"ws://127.0.0.1:{self.port}/ws?token={token}")
        self.addCleanup(ws.close)
        with self.assertRaises(ConnectionClosed) as caught:
            while True:
                ws.recv_json()
        self.assertEqual(caught.exception.code, 4001)

    def test_notify_to_a_user_reaches_only_that_user(self) -> None:
        ana, _ = self.connect(f"?token={wc.make_token(JWT_SECRET, 'ana')}")
        luis, _ = self.connect(f"?token={wc.make_token(JWT_SECRET, 'luis')}")
        answer = wc.notify("privado", "Solo para Ana", user="ana")
        self.assertEqual(answer["recipients"], 1)
        event = self.next_event(ana)
        self.assertEqual((event["type"], event["channel"]), ("privado", "user:ana"))
        wc.notify("para_todos")
        self.assertEqual(self.next_event(luis)["type"], "para_todos")

    def test_notify_to_a_list_of_roles_reaches_each_connection_once(self) -> None:
        admin, _ = self.connect(f"?token={wc.make_token(JWT_SECRET, 'ana', roles=['admin', 'guia'])}")
        guia, _ = self.connect(f"?token={wc.make_token(JWT_SECRET, 'carlos', role='guia')}")
        self.connect(f"?token={wc.make_token(JWT_SECRET, 'luis', role='cliente')}")
        answer = wc.notify("aviso", "Reunión de equipo", role=["admin", "guia"])
        self.assertEqual(answer["recipients"], 2)
        for ws in (admin, guia):
            self.assertEqual(self.next_event(ws)["id"], answer["id"])
        wc.notify("siguiente", role="admin")
        self.assertEqual(self.next_event(admin)["type"], "siguiente")

    def test_notify_to_a_channel_reaches_its_subscribers(self) -> None:
        token = wc.make_token(JWT_SECRET, "ana", channels=["ofertas"])
        ws, _ = self.connect(f"?token={token}")
        ws.send_json({"type": "subscribe", "channel": "ofertas"})
        subscribed = ws.recv_json()
        self.assertEqual((subscribed["type"], subscribed["channel"]), ("hub:subscribed", "ofertas"), subscribed)
        answer = wc.notify("oferta", "2x1 en tours", channel="ofertas")
        event = self.next_event(ws)
        self.assertEqual((event["id"], event["channel"]), (answer["id"], "ofertas"))


class ApiKeyTests(HubTestCase):
    """The helper against a hub started with --api-key."""

    HUB_ARGS = ["--api-key", API_KEY]

    def test_the_key_from_wshub_api_key_is_sent_as_a_bearer_token(self) -> None:
        with mock.patch.dict(os.environ, {"WSHUB_API_KEY": API_KEY}):
            self.assertIs(wc.notify("con_clave")["success"], True)
        with self.assertRaises(wc.WshubError) as caught:
            wc.notify("sin_clave")
        self.assertEqual(caught.exception.status, 401)
        self.assertIs(wc.notify("clave_explicita", api_key=API_KEY)["success"], True)


class OfflineTests(unittest.TestCase):
    """What needs no running hub: token building and an unreachable hub."""

    def test_make_token_signs_the_claims_with_hs256(self) -> None:
        token = wc.make_token("s3cret", "ana", role="admin", ttl=60, roles=["admin"], channels=["ofertas"])
        header_b64, claims_b64, signature_b64 = token.split(".")

        def decode(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        self.assertEqual(json.loads(decode(header_b64)), {"alg": "HS256", "typ": "JWT"})
        claims = json.loads(decode(claims_b64))
        self.assertEqual(claims["sub"], "ana")
        self.assertEqual(claims["role"], "admin")
        self.assertEqual(claims["roles"], ["admin"])
        self.assertEqual(claims["channels"], ["ofertas"])
        self.assertEqual(claims["exp"] - claims["iat"], 60)
        expected = hmac.new(b"s3cret", f"{header_b64}.{claims_b64}".encode(), hashlib.sha256).digest()
        self.assertEqual(decode(signature_b64), expected)
        self.assertNotIn("=", token)

    def test_enviar_notificacion_returns_false_when_the_hub_is_unreachable(self) -> None:
        with mock.patch.dict(os.environ, {"WSHUB_URL": f"http://127.0.0.1:{free_port()}"}):
            with self.assertLogs("websocket_client", "WARNING"):
                self.assertIs(asyncio.run(wc.enviar_notificacion("test", "Hola")), False)


if __name__ == "__main__":
    unittest.main()
