"""``python -m vppagent.cni``: the CNI plugin (``install DIR`` writes a fast launcher)."""

import sys

from vppagent.cni.plugin import main

sys.exit(main())
