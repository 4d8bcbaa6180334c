import sys

from pneumocam.cli import main

sys.exit(main())
