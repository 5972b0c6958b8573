"""PKCS#12 files (soft tokens, escrowed-key export) and their passphrases.

A passphrase is generated here (``secrets``), about 100 bits: five groups of five
characters from an alphabet without look-alikes, easy to read out and type. It is stored
hashed (scrypt, to check one offered back) and sealed (to display it to a user with the
role); it never enters a log, a message or an exception.

The P12 is encrypted with PBES2 (AES-256-CBC, PBKDF2-SHA256) and a SHA-256 MAC, which
OpenSSL 3 and current Windows, macOS and mobile key stores open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from db.keys import PrivateKey
from db.secrets import Secret

_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/l/I
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
KDF_ROUNDS = 100_000


def generate_passphrase(groups: int = 5, size: int = 5) -> Secret:
    return Secret(
        "-".join("".join(secrets.choice(_ALPHABET) for _ in range(size)) for _ in range(groups))
    )


def hash_passphrase(passphrase: Secret) -> str:
    """``scrypt$n$r$p$salt$digest`` (base64): a slow, salted hash of the passphrase."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(passphrase.reveal().encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return (
        f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}$"
        f"{b64(salt).decode()}${b64(digest).decode()}"
    )


def verify_passphrase(passphrase: Secret, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        offered = hashlib.scrypt(
            passphrase.reveal().encode(), salt=salt, dklen=len(digest), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        return False
    return hmac.compare_digest(offered, digest)


def build_p12(
    *,
    name: str,
    key: PrivateKey,
    cert: x509.Certificate,
    chain: list[x509.Certificate],
    passphrase: Secret,
) -> bytes:
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase.reveal().encode())
    )
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, chain or None, encryption
    )
