"""Build hook only; all metadata lives in pyproject.toml.

``build_py`` generates ``vppagent/api/gen/`` from ``proto/`` first (see
``vppagent/api/protogen.py``) and adds the generated packages to the build.
Without grpcio-tools in the build environment the step is skipped with a
warning: the package then generates on first import
(``vppagent.api.gen_modules``) where grpcio-tools is installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_protogen():
    # By file path: importing the vppagent package itself needs its runtime
    # dependencies, which an isolated build environment does not have.
    path = os.path.join(HERE, "vppagent", "api", "protogen.py")
    spec = importlib.util.spec_from_file_location("_vppagent_protogen", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProtos(build_py):
    def run(self):
        protogen = _load_protogen()
        try:
            written = protogen.generate()
            if written:
                print(f"protogen: wrote {len(written)} files")
        except protogen.ProtogenError as exc:
            print(f"warning: protobuf modules not generated: {exc}", file=sys.stderr)
        gen = [p for p in find_packages(where=HERE, include=["vppagent.api.gen", "vppagent.api.gen.*"])]
        for package in gen:
            if package not in (self.packages or []):
                self.packages = list(self.packages or []) + [package]
            if self.distribution.packages is not None and package not in self.distribution.packages:
                self.distribution.packages.append(package)
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
