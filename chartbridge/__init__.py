"""Chartbridge: ambient clinical documentation into the EHR a site already runs."""
__version__ = "0.1.0"
