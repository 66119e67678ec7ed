"""Every setting checked before any work starts: a stated range per number, one line per refusal.

A refused setting raises ``ValueError("<flag>: <what is wrong and what is allowed>")``; the scripts
print it as ``error: ...`` and exit with status 2. NaN and infinities are refused everywhere, and every
range has an upper end, so a huge value is refused too instead of running out of memory or time.
"""
import argparse
import math
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Numbers from low to high; ``kind`` int or float; open ends exclude the bound itself."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def describe(self):
        kind = "an integer" if self.kind is int else "a number"
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        high = f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"
        return f"{kind} {low} and {high}"

    def check(self, flag, value):
        """Raise ValueError naming the flag unless value lies in the range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{flag}: must be {self.describe()}, got {value!r}")
        if self.kind is int and not float(value).is_integer():
            raise ValueError(f"{flag}: must be {self.describe()}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{flag}: must be {self.describe()}, got {value!r} (not a finite number)")
        below = value <= self.low if self.low_open else value < self.low
        above = value >= self.high if self.high_open else value > self.high
        if below or above:
            raise ValueError(f"{flag}: must be {self.describe()}, got {value!r}")
        return value


def count(low=1, high=10**7):
    """An integer count (steps, sizes, samples), from low (default 1) to high."""
    return Range(int, low, high)


def positive(high):
    """A number > 0 and <= high (learning rates, temperatures, thresholds)."""
    return Range(float, 0.0, high, low_open=True)


def coefficient(high=1e3):
    """A number >= 0 and <= high (weights of loss terms, penalties)."""
    return Range(float, 0.0, high)


PROBABILITY = Range(float, 0.0, 1.0, high_open=True)  # [0, 1)
SEED = Range(int, 0, 2**63 - 1)


def flag(name):
    return "--" + name.replace("_", "-")


def check_values(values, ranges):
    """Check each name's value (a number or a list of numbers) against its Range; values is name -> value."""
    for name, spec in ranges.items():
        value = values[name]
        for item in value if isinstance(value, (list, tuple)) else [value]:
            spec.check(flag(name), item)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a refused command line as one line ``error: ...`` (exit status 2), no usage block."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
