"""A fake Kaggle API on loopback, for driving the REAL `kaggle` client in tests.

The client is pointed at it through a sitecustomize.py (put on the subprocess's PYTHONPATH)
that replaces kagglesdk's production endpoint, as ../shared/docs/kaggle.md describes. The
server answers the service methods the harness uses, keeps what it received (JSON bodies,
uploaded bytes) for the test to assert on, checks HTTP basic auth, and stops answering after
a bounded number of requests.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SITECUSTOMIZE = """\
import os
_url = os.environ.get("FAKE_KAGGLE_URL")
if _url:
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint
    _env_to_endpoint[KaggleEnv.PROD] = _url
"""
MAX_REQUESTS = 300


@dataclass
class FakeKaggle:
    """State of the fake server: what it was sent and what it answers."""

    username: str
    key: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    upload_names: dict[str, str] = field(default_factory=dict)
    datasets: set[str] = field(default_factory=set)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, bytes] = field(default_factory=dict)
    leaderboard_csv: str = "TeamId,TeamName,SubmissionDate,Score\n"
    # What GetDatasetStatus answers after each upload of a dataset (create or new version), one per
    # call, before it says READY: a new version takes Kaggle a while to process.
    statuses_after_upload: list[str] = field(default_factory=list)
    status_queue: list[str] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _tokens: Any = field(default_factory=lambda: itertools.count(1))

    def start(self) -> FakeKaggle:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def requests(self, method: str) -> list[dict[str, Any]]:
        """The JSON bodies of every call to one service method (e.g. 'SaveKernel')."""
        return [body for name, body in self.calls if name == method]

    def uploaded(self, token: str) -> bytes:
        return self.uploads[token]

    def new_upload(self, name: str) -> dict[str, str]:
        token = f"tok{next(self._tokens)}"
        self.upload_names[token] = name
        return {"token": token, "createUrl": f"{self.url}/upload/{token}"}

    def answer(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        """The reply to one API call: (HTTP status, JSON object or raw bytes)."""
        if method in ("StartBlobUpload",):
            return 200, self.new_upload(body["name"])
        if method == "StartSubmissionUpload":
            return 200, self.new_upload(body["fileName"])
        if method == "GetDatasetStatus":
            ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": "Not found"}
            return 200, {"status": self.status_queue.pop(0) if self.status_queue else "READY"}
        if method == "CreateDataset":
            ref = f"{body['ownerSlug']}/{body['slug']}"
            self.datasets.add(ref)
            self.status_queue = list(self.statuses_after_upload)
            return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}
        if method == "CreateDatasetVersion":
            ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
            self.status_queue = list(self.statuses_after_upload)
            return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}
        if method == "SaveKernel":
            n = len(self.requests("SaveKernel"))
            return 200, {"ref": body["slug"], "url": f"https://www.kaggle.com/code/{body['slug']}", "versionNumber": n}
        if method == "GetKernelSessionStatus":
            return 200, {"status": "COMPLETE"}
        if method == "ListKernelSessionOutput":
            files = [{"url": f"{self.url}/files/{name}", "fileName": name} for name in self.outputs]
            return 200, {"files": files, "log": "[kernel log]"}
        if method == "CreateSubmission":
            ref = 1000 + len(self.submissions)
            name = self.upload_names[body["blobFileTokens"]]
            self.submissions.append(
                {"ref": ref, "fileName": name, "date": "2017-12-01T10:00:00.000Z", "description": body.get("submissionDescription", ""), "status": "PENDING"}
            )
            return 200, {"message": "Successfully submitted", "ref": ref}
        if method == "GetSubmissionLimits":
            return 200, {"numToday": len(self.submissions), "numAllowedNow": 5}
        if method == "ListSubmissions":
            return 200, {"submissions": list(reversed(self.submissions))}
        if method == "DownloadLeaderboard":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr(f"{body['competitionName']}-publicleaderboard.csv", self.leaderboard_csv)
            return 200, buf.getvalue()
        return 404, {"code": 404, "message": f"fake server: no method {method}"}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggle
    served = itertools.count()

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, payload: Any) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/zip" if isinstance(payload, bytes) else "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _bounded(self) -> bool:
        if next(self.served) >= MAX_REQUESTS:
            self._reply(503, {"code": 503, "message": "fake server: request budget spent"})
            return False
        return True

    def do_PUT(self) -> None:
        if not self._bounded():
            return
        token = self.path.rsplit("/", 1)[-1]
        self.fake.uploads[token] = self._body()
        self._reply(200, {})

    def do_GET(self) -> None:
        if not self._bounded():
            return
        name = self.path.rsplit("/", 1)[-1]
        if name in self.fake.outputs:
            self._reply(200, self.fake.outputs[name])
        else:
            self._reply(404, {"code": 404, "message": "not found"})

    def do_POST(self) -> None:
        if not self._bounded():
            return
        body = json.loads(self._body() or b"{}")
        method = self.path.rsplit("/", 1)[-1]
        expected = "Basic " + base64.b64encode(f"{self.fake.username}:{self.fake.key}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._reply(401, {"code": 401, "message": "Unauthenticated"})
            return
        self.fake.calls.append((method, body))
        self._reply(*self.fake.answer(method, body))


def client_env(monkeypatch: Any, tmp_path: Path, fake: FakeKaggle | None, username: str = "", key: str = "") -> None:
    """Point every `kaggle` subprocess at `fake` and keep the real home untouched."""
    site = tmp_path / "sitecustomize"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME", "VERBOSE", "VERBOSE_OUTPUT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(site))
    if fake is not None:
        monkeypatch.setenv("FAKE_KAGGLE_URL", fake.url)
    if username:
        monkeypatch.setenv("KAGGLE_USERNAME", username)
    if key:
        monkeypatch.setenv("KAGGLE_KEY", key)
