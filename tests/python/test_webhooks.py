"""Webhooks end to end, verified by the Standard Webhooks reference library (``standardwebhooks``).

Two receivers run in this process: one with the hub's secret, which must verify every hook, and
one with another secret, which must reject every hook it is sent (the hub posts each hook to every
``--webhook-url``). Run from the repository root after ``cargo build``:
    PYTHONPATH=.deps/python python3 -m unittest tests/python/test_webhooks.py -v
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

from test_helper import JWT_SECRET, HubTestCase  # also puts scripts/ on the path

import websocket_client as wc  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
WAIT_S = 10.0


class Receiver:
    """An HTTP endpoint that verifies each request with ``Webhook(secret).verify``."""

    def __init__(self, secret: str) -> None:
        self.verified: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.rejected: queue.Queue[str] = queue.Queue()
        webhook = Webhook(secret)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = webhook.verify(body, dict(self.headers))
                except WebhookVerificationError as e:
                    receiver.rejected.put(str(e))
                    self.send_response(401)
                else:
                    receiver.verified.put((self.headers["webhook-id"], payload))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StandardWebhooksTests(HubTestCase):
    """Every hook verifies with the reference library; a wrong secret never does."""

    def setUp(self) -> None:
        self.good = Receiver(SECRET)
        self.bad = Receiver(OTHER_SECRET)
        self.addCleanup(self.good.close)
        self.addCleanup(self.bad.close)
        self.HUB_ARGS = [
            "--jwt-secret", JWT_SECRET,
            "--webhook-url", self.good.url,
            "--webhook-url", self.bad.url,
            "--webhook-secret", SECRET,
            "--offline-grace", "1s",
        ]
        super().setUp()

    def next_hook(self) -> tuple[str, dict]:
        return self.good.verified.get(timeout=WAIT_S)

    def test_presence_hooks_verify_and_a_wrong_secret_rejects_them(self) -> None:
        ws, _ = self.connect(f"?token={wc.make_token(JWT_SECRET, 'ana')}")
        hook_id, online = self.next_hook()
        self.assertTrue(hook_id.startswith("msg_"))
        self.assertEqual(online["type"], "user.online")
        self.assertEqual(online["data"], {"user": "ana", "connections": 1})
        self.assertTrue(online["timestamp"].endswith("Z"))
        ws.close()
        _, offline = self.next_hook()
        self.assertEqual(offline["type"], "user.offline")
        self.assertEqual(offline["data"]["user"], "ana")
        self.assertIn("signature", self.bad.rejected.get(timeout=WAIT_S))
        self.assertTrue(self.good.rejected.empty())

    def test_notify_fallback_sends_a_verified_unread_hook(self) -> None:
        body = {"type": "invoice", "message": "paid", "user": "bob", "fallback": "webhook"}
        request = urllib.request.Request(
            f"{self.base_url}/notify", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            answer = json.loads(response.read())
        _, unread = self.next_hook()
        self.assertEqual(unread["type"], "notification.unread")
        self.assertEqual(unread["data"]["user"], "bob")
        self.assertEqual(unread["data"]["notification"]["id"], answer["id"])
        self.assertEqual(unread["data"]["notification"]["data"], {})
