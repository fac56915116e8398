"""``python -m lungscan_client classify FILE... --api URL``: the ``lungscan`` command."""

import sys

from lungscan_client.cli import main

sys.exit(main())
