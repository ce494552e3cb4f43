"""Operational scripts (fault injection); run from the repository root with `python -m scripts.<name>`."""
