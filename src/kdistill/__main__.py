import sys

from kdistill.cli import main

sys.exit(main())
