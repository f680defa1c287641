"""Machinery every simulator shares: the fault queue, the quiet request handler, JSON
answers and the background HTTP server. Machinery only, never payload code: what a vendor
sends or accepts lives in that vendor's simulator, written from its specification, so the
simulators stay independent of the adapters they test."""
