"""`python -m services.tagging`: the tagging service alone, in production mode."""

from services.runtime.entrypoint import main
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings

if __name__ == "__main__":
    main(TaggingSettings, start_tagging_service)
