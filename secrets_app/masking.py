"""Masks secret values in text that arrives in pieces (a command's stdout or stderr).

A value may be split across two chunks ("hun" + "ter2"), so the masker holds back the end of what it
was given for as long as that end could still be the start of a value: at most len(longest value) - 1
characters. Everything before that is final and safe to emit.

This guards against a value being printed by accident (a debug line, a failing request echoing its
token). It is not a boundary against a command that wants to leak a value it was given: that command
can always print it transformed (reversed, base64, one character per line).
"""

import re
from collections.abc import Iterable
from typing import Any

MASK = "••••"

# Lines of a multi-line value (a PEM key, a JSON credential) are masked on their own too: a tool may
# print one line of it, or re-indent it. Shorter lines ("{", "-----") would mask ordinary output.
LINE_MIN_CHARS = 8


def mask_values(values: Iterable[str]) -> list[str]:
    """The strings to look for: every non-empty value, plus the long-enough lines of multi-line values,
    longest first (so at one position the longest value wins)."""
    found: set[str] = set()
    for value in values:
        if not value:
            continue
        found.add(value)
        if "\n" in value or "\r" in value:
            found.update(line.strip() for line in value.splitlines() if len(line.strip()) >= LINE_MIN_CHARS)
    return sorted(found, key=lambda v: (-len(v), v))


class SecretMasker:
    """feed(chunk) → the text that is safe to emit now; flush() → the rest, at the end of the stream.

    Occurrences are replaced leftmost first, the longest value winning at one position; a run of
    several adjacent occurrences becomes one MASK per occurrence."""

    def __init__(self, values: Iterable[str]) -> None:
        self._values = mask_values(values)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None
        self._held = ""

    @property
    def active(self) -> bool:
        return self._pattern is not None

    @property
    def held(self) -> int:
        """How many characters are held back (for tests and for the bound in the docstring)."""
        return len(self._held)

    def feed(self, chunk: str) -> str:
        if self._pattern is None:
            return chunk
        text = self._held + chunk
        out: list[str] = []
        i = 0
        hold = self._hold_after(text, 0)
        while True:
            if hold < i:  # a match ran past the old hold position
                hold = self._hold_after(text, i)
            match = self._pattern.search(text, i)
            # A match that starts where the text could still be the start of a longer value waits:
            # "abc" may be the beginning of the value "abcdef".
            if match is None or match.start() >= hold:
                out.append(text[i:hold])
                self._held = text[hold:]
                return "".join(out)
            out.append(text[i:match.start()])
            out.append(MASK)
            i = match.end()

    def flush(self) -> str:
        """The end of the stream: what was held back is not a value (it would have been masked)."""
        if self._pattern is None:
            return ""
        rest = self._held
        self._held = ""
        return self._pattern.sub(MASK, rest)

    def discard(self) -> None:
        """Drop what is held back, unseen: for a stream cut short (an output cap), where the held
        text may be the first part of a value whose remainder will never be looked at."""
        self._held = ""

    def _hold_after(self, text: str, start: int) -> int:
        """The first position p ≥ start where text[p:] is a proper prefix of some value (and so could
        still grow into it), else len(text). Only the last len(value) - 1 characters can be one."""
        n = len(text)
        best = n
        for value in self._values:
            first = value[0]
            p = text.find(first, max(start, n - len(value) + 1), best)
            while p != -1:
                if value.startswith(text[p:]):
                    best = p
                    break
                p = text.find(first, p + 1, best)
        return best


def mask_text(text: str, values: Iterable[str]) -> str:
    """Masks a complete text (not a stream): a stored command line, an error message."""
    masker = SecretMasker(values)
    return masker.feed(text) + masker.flush()


def mask_json(value: Any, values: Iterable[str]) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with every secret value masked in its strings."""
    if isinstance(value, str):
        return mask_text(value, values)
    if isinstance(value, dict):
        return {k: mask_json(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v, values) for v in value]
    return value
