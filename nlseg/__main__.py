import sys

from nlseg.cli import main

sys.exit(main())
