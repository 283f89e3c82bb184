"""``python -m service.cli``: the ``handover`` command, as the console script runs it."""

import sys

from service.cli.main import main

sys.exit(main())
