"""Field encryption for personal data: AES-GCM for the value, and a keyed hash
(HMAC-SHA256) so a value can be found without being stored in clear."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class FieldCipher:
    """`key` is 32 bytes (base64 in config). Encryption and lookup hashing use
    separate subkeys derived from it.

    Decryptions are remembered by ciphertext (a bounded table): a member's phone is
    decrypted on every read and every order of theirs, always the same ciphertext,
    and a ciphertext has one plaintext under this key (a forged or corrupted one
    fails authentication and is never remembered). The table holds nothing the
    process could not decrypt again with the key it already holds."""

    DECRYPTED_LIMIT = 10_000  # entries; a full table is emptied

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the field encryption key must be 32 bytes")
        self._aead = AESGCM(hmac.new(key, b"pond-aead", hashlib.sha256).digest())
        self._hash_key = hmac.new(key, b"pond-lookup", hashlib.sha256).digest()
        self._decrypted: dict[str, str] = {}

    @classmethod
    def from_b64(cls, text: str) -> FieldCipher:
        return cls(base64.b64decode(text))

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), None)
        return base64.b64encode(nonce + sealed).decode()

    def decrypt(self, token: str) -> str:
        plaintext = self._decrypted.get(token)
        if plaintext is None:
            raw = base64.b64decode(token)
            plaintext = self._aead.decrypt(raw[:12], raw[12:], None).decode()
            if len(self._decrypted) >= self.DECRYPTED_LIMIT:
                self._decrypted.clear()
            self._decrypted[token] = plaintext
        return plaintext

    def lookup_hash(self, plaintext: str) -> str:
        return hmac.new(self._hash_key, plaintext.encode(), hashlib.sha256).hexdigest()
