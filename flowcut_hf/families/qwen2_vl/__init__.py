"""See :mod:`.adapter`."""
