"""Names people read (tags, dataset names, file names): one Unicode form, nothing invisible, no two alike.

The rule (docs/api.md, "Names"):

* every name is stored in Unicode NFC (``cafe`` + U+0301 and ``caf\u00e9`` are one tag), normalised before any other
  check or comparison;
* a name holding an invisible or direction-changing character is refused: format characters (category Cf:
  U+200B-U+200F, U+202A-U+202E, U+2060-U+2064, U+FEFF, U+00AD, ...), the other default-ignorable code points
  (the Hangul fillers U+115F, U+1160, U+3164, U+FFA0, variation selectors, U+034F, ...) and the line and
  paragraph separators U+2028 / U+2029 (control characters, Cc, are refused by :mod:`app.checks`);
* two different names of one dataset (two classes, two items' file names) whose *skeletons* are equal are refused
  as ambiguous, naming both; the skeleton is NFKC of the case-folded NFKC form (``Cat`` and ``cat``, ``ｃａｔ`` and
  ``cat``, ``ﬁsh`` and ``fish``).

Mixed-script look-alikes (Latin ``a`` and Cyrillic ``а``) are not folded: Unicode's confusables table is not
shipped here. Nothing is ever stripped silently: a refused name is answered with its field, its item and the code
point.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

#: The invisible and direction-changing code points refused in names, as ranges: every format character (category
#: Cf, as of Unicode 15; ``tests/app/test_hostile_uploads.py`` checks that Python's Unicode database has no other),
#: the other default-ignorable code points (DerivedCoreProperties) and the line / paragraph separators.
INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x0600, 0x0605),  # Arabic number signs (Cf)
    (0x061C, 0x061C),  # Arabic letter mark
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),  # Hangul choseong / jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, non-joiner, joiner; left-to-right / right-to-left marks
    (0x2028, 0x2029),  # line / paragraph separator (a line break inside a name)
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidirectional isolates, deprecated format characters
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space (byte order mark)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFFB),  # unassigned specials, interlinear annotation characters
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors supplement
)


def _class_body(ranges: tuple[tuple[int, int], ...]) -> str:
    """The ranges as the body of a regex character class that Python and ECMA-262 (with its ``u`` flag, as JSON
    Schema validators use it) read alike: ``\\uXXXX`` escapes in the BMP, the characters themselves beyond it."""
    out = []
    for lo, hi in ranges:
        a, b = (f"\\u{lo:04X}", f"\\u{hi:04X}") if hi <= 0xFFFF else (chr(lo), chr(hi))
        out.append(a if lo == hi else f"{a}-{b}")
    return "".join(out)


#: :data:`INVISIBLE_RANGES` for a JSON Schema ``pattern`` (``[^...]``): what the schema says, the services check.
INVISIBLE_CLASS = _class_body(INVISIBLE_RANGES)
_INVISIBLE = re.compile(f"[{INVISIBLE_CLASS}]")


def nfc(value: str) -> str:
    """``value`` in Unicode NFC (the stored form of every name)."""
    return unicodedata.normalize("NFC", value)


def invisible_char(value: str) -> str | None:
    """The first invisible or direction-changing character of ``value`` as ``U+XXXX (NAME)``, or None."""
    found = _INVISIBLE.search(value)
    if found is None:
        return None
    label = unicodedata.name(found.group(), "")
    return f"U+{ord(found.group()):04X}" + (f" ({label})" if label else "")


def invisible_problem(value: str) -> str | None:
    """A message when ``value`` holds an invisible or direction-changing character (see the module), else None."""
    found = invisible_char(value)
    if found is None:
        return None
    return f"contains the invisible or direction-changing character {found}: names must render as what they are"


def skeleton(value: str) -> str:
    """What a name looks like, for comparing two names: NFKC of the case-folded NFKC form."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def look_alikes(names: Iterable[str], *, known: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Pairs (earlier name, name) of different names with one skeleton: within ``names``, and a name of ``names``
    against one of ``known`` (pairs within ``known`` alone are not reported: they were stored before)."""
    first: dict[str, str] = {}
    old = dict.fromkeys(known)  # ordered, and a set for the test below
    for name in old:
        first.setdefault(skeleton(name), name)
    pairs: list[tuple[str, str]] = []
    for name in names:
        if name in old:
            continue
        key = skeleton(name)
        other = first.setdefault(key, name)
        if other != name:
            pairs.append((other, name))
    return pairs
