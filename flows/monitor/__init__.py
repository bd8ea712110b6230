"""Monitoring a line's champion in production: its reference (kept at fit time), the checks, the flow."""
