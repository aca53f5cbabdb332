"""The ``vesselseg`` command."""
