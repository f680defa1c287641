"""The shared capability scenarios (contract_tests/capabilities/scenarios.py), driven by this
suite's `driver` (conftest.MdmDriver), against the simulator and in live runs."""
from contract_tests.capabilities.scenarios import *  # noqa: F401,F403 - the shared bodies
