"""A real SMTP server on loopback whose inbox tests read: where alert e-mails arrive."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from harmonizer_dagster_tests.fleet import free_port


class Inbox:
    def __init__(self):
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):
        # The modern policy decodes bodies (get_content), whatever their transfer encoding.
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [message["Subject"] for _, message in self.messages]


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    """The inbox and the port its server listens on at 127.0.0.1."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
