"""Run the service from a JSON settings file: ``python serve_app.py SETTINGS.json PORT`` (tests only)."""

import json
import sys
from pathlib import Path

from tvprompt.serve import Settings, create_app
from tvprompt.serve.server import run

if __name__ == "__main__":
    settings = Settings(**json.loads(Path(sys.argv[1]).read_text()))
    run(create_app(settings), settings, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
