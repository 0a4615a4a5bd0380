"""``python -m tests.faults serve ...``: the application served with the faults."""

import sys

from tests.faults import main

sys.exit(main())
