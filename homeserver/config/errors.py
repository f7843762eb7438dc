class ConfigError(Exception):
    """A config problem, worded for an operator: it names the key and what was expected."""
