"""The member service's settings (environment variables, see the README table)."""

from __future__ import annotations

from services.runtime.config import RuntimeSettings


class MemberSettings(RuntimeSettings):
    member_port: int = 50051
    member_metrics_port: int = 9101
    # 32 bytes, base64: encrypts phone numbers (AES-GCM) and keys their lookup hash.
    phone_key: str = ""
    phone_key_file: str = ""
    # Paid orders that turn a registered member into a consuming one.
    consuming_order_threshold: int = 1
    points_per_yuan: int = 1
    growth_per_yuan: int = 1
    # Each earned lot of points expires this many days after it was earned.
    points_valid_days: int = 365

    def phone_key_b64(self) -> str:
        return self.read_secret(self.phone_key, self.phone_key_file)
