import sys

from eqp.cli import main

sys.exit(main())
