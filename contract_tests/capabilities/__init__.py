"""Contract scenarios written once and run by every adapter's suite (see scenarios.py)."""
