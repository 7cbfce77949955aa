"""`python -m csv_opener_cli …` runs the `csv-opener` command."""

import sys

from csv_opener_cli.main import main

sys.exit(main())
