"""FHIR R4 DocumentReference target: an in-process server simulator (us-core or epic profile)
and, later, the adapter's contract suite. See README.md."""
