"""WeCom's callback encryption scheme (WXBizMsgCrypt), as its documentation
specifies it, with no WeCom SDK: the SDKs pull in pycryptodome and return error
numbers; this raises one error with WeCom's code.

- signature: SHA-1 of the sorted concatenation of token, timestamp, nonce and the
  encrypted text, in hex;
- AES-256-CBC, key = base64(EncodingAESKey + "="), IV = the key's first 16 bytes,
  PKCS#7 padding to a multiple of 32 bytes (not AES's 16);
- plaintext = 16 random bytes + message length (4 bytes, big-endian) + message +
  receive id (the corp id), which must match ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 32  # WeCom pads to 32 bytes, not AES's block size


class WeComCryptoError(Exception):
    """A callback that fails verification; `code` is WeCom's number for it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


SIGNATURE_MISMATCH = -40001
BAD_AES_KEY = -40004
RECEIVER_MISMATCH = -40005
DECRYPT_FAILED = -40007
BAD_BUFFER = -40008


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


class WeComCrypto:
    """The callback settings the brand enters in WeCom's admin console: the token,
    the EncodingAESKey (43 characters, base64 of the 32-byte AES key without its
    "=") and the receive id (the corp id, or the suite id of a third-party app)."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        if len(encoding_aes_key) != 43:
            raise WeComCryptoError(BAD_AES_KEY, "EncodingAESKey must be 43 characters")
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error as exc:
            raise WeComCryptoError(BAD_AES_KEY, "EncodingAESKey is not base64") from exc
        if len(key) != 32:
            raise WeComCryptoError(BAD_AES_KEY, "EncodingAESKey must decode to 32 bytes")
        self.token, self.encoding_aes_key, self.receive_id = token, encoding_aes_key, receive_id
        self.key = key

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> None:
        expected = signature(self.token, timestamp, nonce, encrypted)
        if not hmac.compare_digest(expected, msg_signature.lower()):
            raise WeComCryptoError(SIGNATURE_MISMATCH, "signature does not match")

    def decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> str:
        """Checks the signature, then decrypts; returns the message (XML, or the
        echostr of URL verification)."""
        self.verify(msg_signature, timestamp, nonce, encrypted)
        try:
            sealed = base64.b64decode(encrypted, validate=True)
        except binascii.Error as exc:
            raise WeComCryptoError(DECRYPT_FAILED, "encrypted text is not base64") from exc
        if not sealed or len(sealed) % 16:
            raise WeComCryptoError(DECRYPT_FAILED, "encrypted text has a bad length")
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).decryptor()
        padded = decryptor.update(sealed) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise WeComCryptoError(BAD_BUFFER, "bad padding")
        plain = padded[:-pad]
        if len(plain) < 20:
            raise WeComCryptoError(BAD_BUFFER, "message too short")
        (length,) = struct.unpack(">I", plain[16:20])
        message, receive_id = plain[20 : 20 + length], plain[20 + length :]
        if len(message) != length:
            raise WeComCryptoError(BAD_BUFFER, "message length does not match")
        if not hmac.compare_digest(receive_id, self.receive_id.encode()):
            raise WeComCryptoError(RECEIVER_MISMATCH, "message is for another receiver")
        try:
            return message.decode()
        except UnicodeDecodeError as exc:
            raise WeComCryptoError(BAD_BUFFER, "message is not UTF-8") from exc

    def encrypt(
        self, message: str, timestamp: str, nonce: str, *, random16: bytes = b""
    ) -> tuple[str, str]:
        """(encrypted text, its signature): for replies, and for tests and the dev
        stand-in that play WeCom."""
        body = message.encode()
        plain = (random16 or os.urandom(16)) + struct.pack(">I", len(body)) + body
        plain += self.receive_id.encode()
        pad = _BLOCK - len(plain) % _BLOCK
        plain += bytes([pad]) * pad
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).encryptor()
        encrypted = base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()
        return encrypted, signature(self.token, timestamp, nonce, encrypted)
