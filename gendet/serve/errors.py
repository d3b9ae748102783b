"""The error of one input that cannot be scored (light: the request parsers import it without torch)."""


class ItemError(Exception):
    """One input that cannot be scored; its message becomes that item's ``error``."""
