"""Mail to card holders over SMTP (``CARDLINE_SMTP_URL``), with the standard library.

``smtp://[user:password@]host[:port]`` sends in the clear (a local relay);
``smtp+starttls://`` upgrades with STARTTLS; ``smtps://`` is SMTP over TLS. Secrets
(the P12 passphrase) go in their own message, never beside the file they open, and
never into a log: a failure is reported with the server's address only.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from db.secrets import Secret
from schemas.errors import ConfigurationError, TransientError

_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class MailError(TransientError):
    """The SMTP server could not be reached or refused the message (retried)."""


@dataclass(frozen=True)
class Mailer:
    scheme: str
    host: str
    port: int
    sender: str
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_url(cls, url: str, sender: str) -> Mailer:
        parts = urlsplit(url)
        if parts.scheme not in _PORTS or not parts.hostname:
            raise ConfigurationError(
                "CARDLINE_SMTP_URL must look like smtp://host:port, smtp+starttls://... "
                "or smtps://..."
            )
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=parts.port or _PORTS[parts.scheme],
            sender=sender,
            username=unquote(parts.username) if parts.username else None,
            password=Secret(unquote(parts.password)) if parts.password else None,
        )

    def send(self, message: EmailMessage) -> None:
        message["From"] = self.sender
        try:
            smtp: smtplib.SMTP
            if self.scheme == "smtps":
                smtp = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    timeout=self.timeout_s,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with smtp:
                if self.scheme == "smtp+starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.username and self.password:
                    smtp.login(self.username, self.password.reveal())
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(
                f"mail to {message['To']} via {self.host}:{self.port} failed: {type(exc).__name__}"
            ) from None

    def send_softtoken(
        self, *, to: str, holder: str, token_type: str, p12: bytes, filename: str
    ) -> None:
        msg = EmailMessage()
        msg["To"] = to
        msg["Subject"] = f"Your software token ({token_type})"
        msg.set_content(
            f"Dear {holder},\n\n"
            "attached is your software token: a certificate and its private key in a "
            "PKCS#12 file.\nTo install it, open the file and enter its passphrase when "
            "asked. You get the passphrase separately\n(from your operator, or in a "
            "second message); keep both apart.\n"
        )
        msg.add_attachment(p12, maintype="application", subtype="x-pkcs12", filename=filename)
        self.send(msg)

    def send_pin_letter(self, *, to: str, holder: str, card_number: str, letter: bytes) -> None:
        """Mail the PIN letter PDF. The card number is masked as the letter masks it,
        in the subject, the text and the attachment's name alike."""
        # Here, not at the top: the configuration imports this module, and the letters
        # module brings in reportlab.
        from workers.letters import mask_card_number

        masked = mask_card_number(card_number)
        last = "".join(ch for ch in masked if ch.isalnum())  # the characters left shown
        msg = EmailMessage()
        msg["To"] = to
        msg["Subject"] = f"The PIN letter of your card {masked}"
        msg.set_content(
            f"Dear {holder},\n\nattached is the PIN letter of your card {masked}. "
            "Keep it apart from the card,\nand change the PIN the first time you use it.\n"
        )
        msg.add_attachment(
            letter, maintype="application", subtype="pdf", filename=f"pin-letter-{last}.pdf"
        )
        self.send(msg)

    def send_passphrase(self, *, to: str, holder: str, token_type: str, passphrase: Secret) -> None:
        msg = EmailMessage()
        msg["To"] = to
        msg["Subject"] = f"Passphrase for your software token ({token_type})"
        msg.set_content(
            f"Dear {holder},\n\nthe passphrase of your software token ({token_type}) is:\n\n"
            f"    {passphrase.reveal()}\n\nDelete this message once the token is installed.\n"
        )
        self.send(msg)
