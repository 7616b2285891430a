"""A real SMTP server on loopback whose inbox tests read: where alert e-mails arrive."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from harmonizer_dagster_tests.fleet import free_port


class Inbox:
    def __init__(self):
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):
        # The modern policy decodes bodies (get_content), whatever their transfer encoding.
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [message["Subject"] for _, message in self.messages]


@contextmanager
def smtp_server(login: tuple[str, str] | None = None) -> Iterator[tuple[Inbox, int]]:
    """The inbox and the port its server listens on at 127.0.0.1. With a `login` (user,
    password) the server offers AUTH PLAIN and keeps in `inbox.logins` each login it accepted."""
    inbox = Inbox()
    port = free_port()
    auth = {}
    if login is not None:

        def authenticator(server, session, envelope, mechanism, credentials: LoginPassword) -> AuthResult:
            given = (credentials.login.decode(), credentials.password.decode())
            if given == login:
                inbox.logins.append(given)
            return AuthResult(success=given == login)

        # On loopback, without TLS. Not LOGIN: this server's prompts are not the "Username:" and
        # "Password:" that clients (Alertmanager's among them) expect from a relay.
        auth = {"authenticator": authenticator, "auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN"]}
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **auth)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
