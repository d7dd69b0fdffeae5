"""`python -m services.tagging`: the tagging service alone, in production mode."""

from services.runtime.entrypoint import main
from services.tagging.server import SPEC

if __name__ == "__main__":
    main(SPEC)
