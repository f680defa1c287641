"""Site onboarding: org config skeletons, the effective (layered) config with provenance,
read-only go-live checks, and the simulator sandbox."""
