import sys

from vppagent.cli import main

sys.exit(main())
