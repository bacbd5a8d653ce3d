"""What any input may hold, checked where it is parsed, before it reaches a store or a model.

- `Text`: valid Unicode without NUL. A lone surrogate (`"\\udc00"` in JSON) cannot be stored
  or encoded as UTF-8, and NUL ends strings in C libraries (tokenizers, PostgreSQL refuses
  it in text); both are refused with a field error, never stored.
- `NotBlank`: `Text` that says something (not only white space), e.g. a question.
- `RowId`: an id of a database row (an integer primary key): 1 to 2**31 - 1, the range of
  an INTEGER column in PostgreSQL. A bigger number is a 4xx, not an overflow in the driver.

Both are pydantic annotations, so the API's bodies, path and query parameters and the CLI's
inputs check them the same way, and the OpenAPI document says what is accepted.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

MAX_ROW_ID = 2**31 - 1

# JSON Schema `pattern` (ECMA-262 and Python regex alike): no NUL, no UTF-16 surrogate
TEXT_PATTERN = r"^[^\x00\ud800-\udfff]*$"
_REFUSED = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: str) -> str:
    """`value`, or a ValueError naming what makes it unusable."""
    found = _REFUSED.search(value)
    if found is not None:
        what = "a NUL character" if found.group() == "\x00" else "a lone UTF-16 surrogate"
        raise ValueError(
            f"text must be valid Unicode without NUL; found {what} at position {found.start()}"
        )
    return value


Text = Annotated[
    str, AfterValidator(clean_text), Field(json_schema_extra={"pattern": TEXT_PATTERN})
]
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must say something: not empty, not only white space")
    return value


# `Text` with at least one character that is not white space
NOT_BLANK_PATTERN = r"^[^\x00\ud800-\udfff]*[^\s\x00\ud800-\udfff][^\x00\ud800-\udfff]*$"
NotBlank = Annotated[
    str,
    AfterValidator(clean_text),
    AfterValidator(not_blank),
    Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN}),
]
