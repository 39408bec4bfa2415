import sys

from jaxfm.cli import main

sys.exit(main())
