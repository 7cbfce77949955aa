"""``python -m tests.support.fake_openai --port 0 ...`` (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
