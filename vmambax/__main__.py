import sys

from vmambax.cli import main

sys.exit(main())
