"""`python -m services._example`: the example service alone."""

from services._example.server import SPEC
from services.runtime.entrypoint import main

if __name__ == "__main__":
    main(SPEC)
