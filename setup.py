"""Package discovery for the one-folder-per-layer layout.

pyproject.toml maps each top-level folder (core/, adapters/, ...) into the `chartbridge`
namespace; this walks those folders so every subpackage an adapter adds is installed
without editing a list.
"""
from pathlib import Path

from setuptools import setup

ROOTS = {
    "chartbridge": "chartbridge",
    "chartbridge.core": "core",
    "chartbridge.adapters": "adapters",
    "chartbridge.ledger": "ledger",
    "chartbridge.mappings": "mappings",
    "chartbridge.config": "config",
    "contract_tests": "contract_tests",
}


def _packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            found.append(".".join((name, *rel)))
    return found


setup(packages=_packages())
