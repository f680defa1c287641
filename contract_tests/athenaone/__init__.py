"""athenaOne simulator (and, later, its contract suite)."""
from contract_tests.athenaone.simulator import AthenaSimulator, serve

__all__ = ["AthenaSimulator", "serve"]
