"""`python -m services.member`: the member service alone, in production mode
(MongoDB from MONGODB_URI, Redis from REDIS_URL, secrets from env or files)."""

from services.member.server import start_member_service
from services.member.settings import MemberSettings
from services.runtime.entrypoint import main

if __name__ == "__main__":
    main(MemberSettings, start_member_service, lambda s: {"POND_PHONE_KEY": s.phone_key_b64()})
