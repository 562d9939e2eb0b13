"""A script with a dependency: `bkg exe examples/python-deps/main.py`.

The agent installs requirements.txt (beside this file) once, in an install sandbox whose only
network is the package index, into an environment it mounts read-only at /opt/bkg/python; every
later run with the same requirements starts at once. `bkg envs ls` lists the environment.
"""

import os

import six

print("six", six.__version__, "from", os.path.dirname(six.__file__))
