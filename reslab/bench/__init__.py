"""Benchmarks: each module plugs a ``reslab bench <name>`` sub-command in through ``cli_register``."""
