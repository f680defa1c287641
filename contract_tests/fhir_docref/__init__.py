"""FHIR R4 DocumentReference target: an in-process server simulator, one per server profile
(us-core, epic, oracle-health), and the contract suite. See README.md."""
