import sys

from currydpo.cli import main

sys.exit(main())
