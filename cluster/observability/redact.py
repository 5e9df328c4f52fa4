"""Masks credentials in text before it is logged or printed: the password of a URL (`user:***@host`) and the value
of `password=` pairs in key/value DSNs and query strings.

It never changes anything else in the text, and never unmasks: a masked string stays masked when masked again.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ - the password runs to the last "@" before the host part ends (urllib's reading), so a
# password with an unencoded "@" is masked whole rather than cut short.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)(?P<secret>[^\s/?#]*)@")
# password=..., sslpassword=..., PGPASSWORD=... : a quoted value (libpq's quoting) or a bare one up to a separator.
_KEY_VALUE_PASSWORD = re.compile(
    r"(?P<head>\b\w*pass(?:word|wd)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """`text` with every URL password and `password=` value replaced by `***`."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    if "=" in text:
        text = _KEY_VALUE_PASSWORD.sub(rf"\g<head>{MASK}", text)
    return text
