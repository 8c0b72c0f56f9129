"""Upper-cases text and adds an exclamation mark."""


def shout(text: str) -> str:
    """`text`, shouted."""
    return text.upper() + "!"
