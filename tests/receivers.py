"""Where notifications land in tests: a real SMTP server (aiosmtpd) and a real HTTP receiver, both
on free local ports, each keeping what it received; and the settings that point StreamFlow at them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import free_port

SMTP_CONN_ID = "streamflow_test_smtp"
RECIPIENTS = ("retention-team@example.com", "ml-oncall@example.com")


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    body: str


@dataclass
class Inbox:
    """What a receiver got, in order; `wait_for` polls because delivery runs in another thread."""

    items: list = field(default_factory=list)

    def wait_for(self, predicate, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := [item for item in list(self.items) if predicate(item)]:
                return found
            time.sleep(0.05)
        return []


class _SmtpHandler:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        body = message.get_body(preferencelist=("html", "plain"))
        self.inbox.items.append(
            Mail(envelope.mail_from, list(envelope.rcpt_tos), str(message["subject"]), body.get_content())
        )
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    """An SMTP server on a free port (no TLS, no auth) and its inbox."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(_SmtpHandler(inbox), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


@contextmanager
def webhook_receiver(status: int = 204) -> Iterator[tuple[str, Inbox]]:
    """An HTTP server taking JSON POSTs on a free port; answers `status` and keeps the bodies."""
    inbox = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's hook name)
            inbox.items.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/streamflow", inbox
    finally:
        server.shutdown()
        server.server_close()


def notification_env(smtp_port: int, webhook_url: str) -> dict[str, str]:
    """The variables that turn both channels on, as a user sets them (README "Notifications")."""
    return {
        # Plain SMTP to the local server; a short timeout and no retries, so a test of a server that
        # is down fails in seconds, not in the hook's default 5 retries x 30 s.
        f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}": (
            f"smtp://127.0.0.1:{smtp_port}?disable_ssl=true&disable_tls=true&timeout=5&retry_limit=0"
        ),
        "STREAMFLOW_NOTIFY_SMTP_CONN": SMTP_CONN_ID,
        "STREAMFLOW_NOTIFY_TO": ", ".join(RECIPIENTS),
        "STREAMFLOW_NOTIFY_FROM": "streamflow@example.com",
        "STREAMFLOW_NOTIFY_WEBHOOK_URL": webhook_url,
    }
