"""Tools of the calculator worker. Plain functions: their signatures and docstrings are the schema."""

import math


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


def square_root(x: float) -> float:
    """The square root of a non-negative number.

    Args:
        x: The number.
    """
    if x < 0:
        raise ValueError("cannot take the square root of a negative number")
    return math.sqrt(x)
