"""Contract tests: generic properties checked on every row of ``examples.EXAMPLES``."""
