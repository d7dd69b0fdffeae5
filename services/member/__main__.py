"""`python -m services.member`: the member service alone, in production mode
(MongoDB from MONGODB_URI, Redis from REDIS_URL, secrets from env or files)."""

from services.member.server import SPEC
from services.runtime.entrypoint import main

if __name__ == "__main__":
    main(SPEC)
