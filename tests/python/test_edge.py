"""The hub against the real third-party ``websockets`` client, as a careless or hostile client uses it.

Each test starts the hub binary (``WSHUB_BIN``, default ``target/debug/wshub``) on a free port with
the default limits and checks what such a client sees: the documented close code of an oversized
frame arrives (not a reset), a foreign page's ``Origin`` is refused, and the API key makes an
operator connection only from the first frame, never from loopback alone.

Run from the repository root after ``cargo build``, with ``.deps/python`` on ``PYTHONPATH``:
    python3 -m unittest discover -s tests/python -v
"""

from __future__ import annotations

import asyncio
import json
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import websockets  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from test_helper import HubTestCase  # noqa: E402

KEY = "edge-python-key"


class OversizedFrameTests(HubTestCase):
    """Default --max-message-bytes (512)."""

    def test_an_oversized_frame_gets_close_1009_every_time(self) -> None:
        async def once() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{self.port}/ws", max_size=None) as ws:
                json.loads(await ws.recv())  # hub:connected
                try:
                    await ws.send("x" * 65536)
                    while True:
                        await ws.recv()
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else None

        async def main() -> list[int | None]:
            return [await once() for _ in range(20)]

        self.assertEqual(asyncio.run(main()), [1009] * 20)


class OriginTests(HubTestCase):
    HUB_ARGS = ["--api-key", KEY, "--allowed-origins", "https://app.example"]

    def test_a_foreign_origin_is_refused_with_403_and_an_allowed_one_connects(self) -> None:
        async def main() -> None:
            url = f"ws://127.0.0.1:{self.port}/ws"
            with self.assertRaises(InvalidStatus) as refused:
                await websockets.connect(url, origin="https://evil.example")
            self.assertEqual(refused.exception.response.status_code, 403)
            async with websockets.connect(url, origin="https://app.example") as ws:
                self.assertEqual(json.loads(await ws.recv())["type"], "hub:connected")

        asyncio.run(main())

    def test_the_key_in_a_first_frame_makes_an_operator_only_from_an_allowed_origin(self) -> None:
        async def subscribe_dashboard(origin: str) -> dict:
            url = f"ws://127.0.0.1:{self.port}/ws"
            async with websockets.connect(url, origin=origin) as ws:
                await ws.send(json.dumps({"type": "auth", "api_key": KEY}))
                await ws.send(json.dumps({"type": "subscribe", "channel": "admin:dashboard"}))
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] in ("hub:subscribed", "hub:error") and frame.get("code") != "unauthorized":
                        return frame

        self.assertEqual(asyncio.run(subscribe_dashboard("https://app.example"))["type"], "hub:subscribed")
        # Same-origin pages (the hub's own dashboard) are trusted too.
        own = f"http://127.0.0.1:{self.port}"
        self.assertEqual(asyncio.run(subscribe_dashboard(own))["type"], "hub:subscribed")


class NoKeyTests(HubTestCase):
    def test_without_an_api_key_loopback_is_no_operator(self) -> None:
        async def main() -> dict:
            async with websockets.connect(f"ws://127.0.0.1:{self.port}/ws") as ws:
                json.loads(await ws.recv())
                await ws.send(json.dumps({"type": "auth", "api_key": "anything"}))
                return json.loads(await ws.recv())

        answer = asyncio.run(main())
        self.assertEqual(answer["code"], "unauthorized", answer)
        self.assertIn("--api-key", answer["message"])


if __name__ == "__main__":
    unittest.main()
