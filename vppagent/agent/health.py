"""HTTP health (/liveness, /readiness), /status (JSON) and Prometheus /metrics."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class AgentMetrics:
    """The agent's own registry, so tests can run several agents in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.updates_applied = Counter(
            "vppagent_updates_applied_total", "Dataplane updates applied, by type",
            ["type"], registry=self.registry)
        self.sync_latency = Histogram(
            "vppagent_sync_latency_seconds",
            "Time from a datastore change being read to the dataplane having applied it",
            registry=self.registry, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10))
        self.errors = Counter(
            "vppagent_errors_total", "Errors by component", ["component"], registry=self.registry)
        self.ready = Gauge("vppagent_ready", "1 when the agent is ready", registry=self.registry)
        self.objects = Gauge(
            "vppagent_objects", "Objects in the desired state, by kind", ["kind"], registry=self.registry)


class HealthServer:
    """Serves health and metrics on a small threaded HTTP server."""

    def __init__(self, host: str, port: int, status: Callable[[], dict], metrics: AgentMetrics) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                outer._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self._status = status
        self._metrics = metrics
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?")[0]
        if path == "/liveness":
            self._reply(req, 200, b"ok\n", "text/plain")
        elif path == "/readiness":
            ready = bool(self._status().get("ready"))
            self._reply(req, 200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
        elif path == "/status":
            self._reply(req, 200, json.dumps(self._status(), indent=2, default=str).encode(), "application/json")
        elif path == "/metrics":
            self._reply(req, 200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST)
        else:
            self._reply(req, 404, b"not found\n", "text/plain")

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
