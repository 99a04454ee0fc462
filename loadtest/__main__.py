"""``python -m framebus.loadtest``: the load generator and soak test (``framebus.loadtest.soak``)."""

import sys

from framebus.loadtest.soak import main

sys.exit(main(prog="python -m framebus.loadtest"))
