"""``python -m training {train,evaluate,publish,promote,rollback,list}``; see :mod:`training.cli`."""

import sys

from training.cli import main

sys.exit(main())
