"""Write a fast launcher for the plugin into a CNI bin directory.

The ``vppagent-cni`` console script runs the interpreter with its site
initialisation, which in a virtualenv with editable installs imports
pathlib, re and friends (~15 ms) before the plugin even starts. The plugin
needs nothing from site-packages, so the launcher runs ``python -I -S``
(isolated, no site) with only vppagent's own directory on ``sys.path``.
This is how a node would install it (like Calico's install container
copying its binary into /opt/cni/bin).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import vppagent

LAUNCHER = """#!{python} -IS
# vppagent CNI plugin launcher (written by `vppagent-cni install`): isolated, no site-packages scan.
import sys
sys.path.insert(0, {root!r})
from vppagent.cni.plugin import main
sys.exit(main())
"""


def write_launcher(directory: str | os.PathLike[str], name: str = "vppagent-cni",
                   python: str | None = None) -> str:
    """Write (atomically) ``directory/name``, executable; returns its path."""
    root = str(Path(vppagent.__file__).resolve().parent.parent)
    target = Path(directory) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.tmp{os.getpid()}")
    tmp.write_text(LAUNCHER.format(python=python or sys.executable, root=root))
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return str(target)
