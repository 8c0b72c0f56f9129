"""Says hello, loudly."""

from shout import shout


def greet(name: str) -> str:
    """A greeting for `name`."""
    return shout(f"hello {name}")
