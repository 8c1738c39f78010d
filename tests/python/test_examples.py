"""The examples in examples/ run as shipped, against a real hub (issue 15).

- examples/django: `manage.py migrate`, models saved in `manage.py shell` fire the signal handlers,
  and `manage.py notify_hub` publishes; a WebSocket client (the `websockets` package) receives each.
- examples/fastapi_app.py under uvicorn: `POST /reservas` (sent with httpx) publishes.
- examples/nginx/nginx.conf under Debian's nginx (ports and paths changed, nothing else): TLS with
  a self-signed certificate made here, `wss://` through the cluster upstream to two hubs sharing a
  redis-server, and an access log without the token or the API key.

Run from the repository root after ``cargo build``:
    python3 -m unittest discover -s tests/python -v
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

from test_helper import API_KEY, JWT_SECRET, ROOT, HubTestCase, free_port, is_event

import websocket_client as wc
from websockets.sync.client import connect

EXAMPLES = ROOT / "examples"
START_TIMEOUT = 20.0


def example_env(base_url: str, **extra: str) -> dict[str, str]:
    """The environment an example runs with: the hub's URL and key, the helper on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env.update(WSHUB_URL=base_url, WSHUB_API_KEY=API_KEY, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), env.get("PYTHONPATH", "")])
    return env


def next_event(ws) -> dict:
    """The next notification on a `websockets` connection, skipping `hub:*` frames."""
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if is_event(frame):
            return frame


def wait_http(url: str, process: subprocess.Popen, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {START_TIMEOUT}s")


def wait_port(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class DjangoExampleTests(HubTestCase):
    HUB_ARGS = ["--jwt-secret", JWT_SECRET, "--api-key", API_KEY]

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLES / "django",
            env=example_env(self.base_url, DJANGO_DB=str(Path(self.tmp.name) / "db.sqlite3")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, f"manage.py {' '.join(args)}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def test_signals_and_the_management_command_publish(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.manage("migrate", "--verbosity", "0")
        token = wc.make_token(JWT_SECRET, "7", role="admin")
        with connect(f"ws://127.0.0.1:{self.port}/ws?token={token}") as ws:
            self.manage(
                "shell",
                "-c",
                "from reservas.models import Tour, Reserva\n"
                "t = Tour.objects.create(nombre='Cenote Azul', destino='Bacalar', precio=1250)\n"
                "Reserva.objects.create(tour=t, usuario_id='7', personas=3)\n",
            )
            tour = next_event(ws)
            self.assertEqual(tour["type"], "tour_creado")
            self.assertEqual(tour["data"]["nombre"], "Cenote Azul")
            self.assertEqual(tour["data"]["precio"], 1250.0)
            reserva = next_event(ws)
            self.assertEqual(reserva["type"], "reserva_creada")
            self.assertEqual(reserva["message"], "Nueva reserva para Cenote Azul - 3 persona(s)")
            answer = json.loads(self.manage("notify_hub", "aviso", "Hola equipo", "--role", "admin", "--data", '{"n": 1}'))
            self.assertTrue(answer["success"], answer)
            aviso = next_event(ws)
            self.assertEqual((aviso["type"], aviso["message"], aviso["data"]), ("aviso", "Hola equipo", {"n": 1}))
            self.assertEqual(aviso["channel"], "role:admin")


class FastApiExampleTests(HubTestCase):
    HUB_ARGS = ["--jwt-secret", JWT_SECRET, "--api-key", API_KEY]

    def test_posting_a_booking_publishes_to_everyone_and_to_the_customer(self) -> None:
        import httpx

        port = free_port()
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(port), "--log-level", "warning"],
            cwd=EXAMPLES,
            env=example_env(self.base_url),
        )
        self.addCleanup(app.wait)
        self.addCleanup(app.kill)
        wait_http(f"http://127.0.0.1:{port}/docs", app)
        token = wc.make_token(JWT_SECRET, "u-9")
        with connect(f"ws://127.0.0.1:{self.port}/ws?token={token}") as ws:
            booking = {"tour_id": "t-3", "tour_nombre": "Cenote Azul", "usuario_id": "u-9",
                       "usuario_nombre": "Ana", "fecha": "2026-12-01", "personas": 2}
            response = httpx.post(f"http://127.0.0.1:{port}/reservas", json=booking, timeout=10)
            self.assertEqual(response.status_code, 200, response.text)
            first = next_event(ws)
            self.assertEqual(first["type"], "reserva_creada")
            self.assertEqual(first["data"]["reservaId"], response.json()["id"])
            second = next_event(ws)
            self.assertEqual(second["type"], "reserva_confirmada")
            self.assertEqual(second["channel"], "user:u-9")


class NginxExampleTests(unittest.TestCase):
    """examples/nginx/nginx.conf with two clustered hubs behind it."""

    def setUp(self) -> None:
        for tool in ("nginx", "redis-server", "openssl"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                self.fail(f"{tool} is missing: scripts/test.sh installs it (Debian package {tool})")
        self.dir = Path(tempfile.mkdtemp(prefix="wshub-nginx-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody when the test runs as root
        self.binary = Path(os.environ.get("WSHUB_BIN", "target/debug/wshub"))
        if not self.binary.is_absolute():
            self.binary = ROOT / self.binary

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        return process

    def config(self, https: int, http: int, hubs: list[int]) -> Path:
        """The example with its ports and paths moved into this test's directory, nothing else."""
        text = (EXAMPLES / "nginx" / "nginx.conf").read_text()
        replacements = {
            "pid /run/nginx-wshub.pid;": f"pid {self.dir}/nginx.pid;",
            "/var/log/nginx/": f"{self.dir}/",
            "/etc/nginx/tls/": f"{self.dir}/",
            "listen 443 ssl;": f"listen 127.0.0.1:{https} ssl;",
            "listen 80;": f"listen 127.0.0.1:{http};",
            "server 127.0.0.1:8081 ": f"server 127.0.0.1:{hubs[0]} ",
            "server 127.0.0.1:8082 ": f"server 127.0.0.1:{hubs[1]} ",
        }
        for old, new in replacements.items():
            self.assertIn(old, text, "the example changed: update this test")
            text = text.replace(old, new)
        path = self.dir / "nginx.conf"
        path.write_text(text)
        return path

    def test_wss_through_nginx_to_a_two_node_cluster_with_redacted_logs(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-keyout", str(self.dir / "wshub.key"), "-out", str(self.dir / "wshub.crt")],
            check=True, capture_output=True,
        )
        redis_port = free_port()
        self.spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no"], "redis")
        wait_port(redis_port)
        hubs = [free_port(), free_port()]
        for i, port in enumerate(hubs):
            hub = self.spawn([str(self.binary), "--addr", f"127.0.0.1:{port}",
                              "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
                              "--jwt-secret", JWT_SECRET, "--api-key", API_KEY], f"hub{i}")
            wait_http(f"http://127.0.0.1:{port}/health", hub)
        https, http = free_port(), free_port()
        conf = self.config(https, http, hubs)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        check = subprocess.run([nginx, "-t", "-p", str(self.dir), "-c", str(conf)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stderr)
        proxy = self.spawn([nginx, "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"], "nginx")
        tls = ssl.create_default_context(cafile=str(self.dir / "wshub.crt"))
        wait_http(f"https://localhost:{https}/health", proxy, tls)

        # Two clients: least_conn puts them on different nodes; each gets what the other node publishes.
        token = wc.make_token(JWT_SECRET, "42", role="admin")
        with connect(f"wss://localhost:{https}/ws?token={token}", ssl=tls) as a, \
                connect(f"wss://localhost:{https}/ws?api_key={API_KEY}", ssl=tls) as b:
            for ws in (a, b):
                self.assertEqual(json.loads(ws.recv(timeout=10))["type"], "hub:connected")
            for n in range(4):
                answer = wc.notify(f"through_nginx_{n}", "hola", url=f"http://127.0.0.1:{hubs[n % 2]}",
                                   api_key=API_KEY)
                self.assertTrue(answer["success"], answer)
                for ws in (a, b):
                    self.assertEqual(next_event(ws)["type"], f"through_nginx_{n}")
        request = urllib.request.Request(
            f"https://localhost:{https}/notify", data=b'{"type":"via_proxy"}', method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, context=tls, timeout=10) as response:
            self.assertEqual(json.loads(response.read())["nodes"], 2)
        with self.assertRaises(urllib.error.HTTPError) as redirect:
            urllib.request.build_opener(NoRedirect).open(f"http://127.0.0.1:{http}/ws?token=x", timeout=10)
        self.assertEqual(redirect.exception.code, 301)

        log = (self.dir / "wshub-access.log").read_text()
        self.assertIn("/ws?token=[redacted]", log)
        self.assertIn("/ws?api_key=[redacted]", log)
        self.assertNotIn(token, log)
        self.assertNotIn(API_KEY, log)
        self.assertNotIn("token=x", log)
        self.assertEqual(len({line.rsplit("upstream=", 1)[1] for line in log.splitlines() if "/ws?" in line
                              and "upstream=127" in line}), 2, log)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


if __name__ == "__main__":
    unittest.main()
