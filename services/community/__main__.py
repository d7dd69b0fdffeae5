"""`python -m services.community`: the community service alone (production mode)."""

from services.community.server import SPEC
from services.runtime.entrypoint import main

if __name__ == "__main__":
    main(SPEC)
