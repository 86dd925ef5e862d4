import sys

from mixmask.cli import main

sys.exit(main())
