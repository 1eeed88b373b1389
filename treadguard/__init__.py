"""treadguard: a treadmill safety controller for reverse-walking rehabilitation.

The product's folders (``safety/``, ``drivers/``, ``contract/``, ``config/``, ``simulator/``,
``controller/``) sit at the top of the repository, as the product card lays them out; this
package gathers them under one installed name (its entries are links to those folders), so a
wheel installs ``treadguard.safety`` and never a top-level ``safety`` or ``config`` that would
collide with PyPI's packages of those names.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("treadguard")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
