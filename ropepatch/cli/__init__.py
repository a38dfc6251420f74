"""The ``ropepatch`` command line: one module per verb."""
