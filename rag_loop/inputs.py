"""What any input may hold, checked where it is parsed, before it reaches a store or a model.

- `Text`: valid Unicode without NUL. A lone surrogate (`"\\udc00"` in JSON) cannot be stored
  or encoded as UTF-8, and NUL ends strings in C libraries (tokenizers, PostgreSQL refuses
  it in text); both are refused with a field error, never stored.
- `NotBlank`: `Text` that says something (not only white space), e.g. a question.
- `INTEGRAL`: for an integer in a body, strict (no `"5"`, no `true`), 5.0 taken as 5.
- `RowId`: an id of a database row (an integer primary key): 1 to 2**31 - 1, the range of
  an INTEGER column in PostgreSQL. A bigger number is a 4xx, not an overflow in the driver.

All are pydantic annotations, so the API's bodies, path and query parameters and the CLI's
inputs check them the same way, and the OpenAPI document says what is accepted. `problem`
is what one of pydantic's errors says, for the API's error details and the CLI's messages
alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

MAX_ROW_ID = 2**31 - 1

# JSON Schema `pattern` (ECMA-262 and Python regex alike): no NUL. A JSON Schema string is
# a string of Unicode characters, which a lone surrogate is not: the schema cannot say more.
TEXT_PATTERN = r"^[^\x00]*$"
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


def integral(value: Any) -> Any:
    """JSON Schema's `integer` includes numbers like 5.0: take them as 5. Strings and
    booleans stay what they are, for the strict check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# an integer in a body, strict (no "5", no true) but with 5.0 taken as 5. Bounds go before
# it in the Annotated (`Annotated[int, Field(ge=1), INTEGRAL]`): after it, pydantic would
# still check them but write them into the JSON schema under names no validator knows.
INTEGRAL = BeforeValidator(integral)
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID), INTEGRAL]


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must say something: not empty, not only white space")
    return value


# `Text` with at least one character that is not white space
NOT_BLANK_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
NotBlank = Annotated[
    str,
    AfterValidator(clean_text),
    AfterValidator(not_blank),
    Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN}),
]


def problem(error: Mapping[str, Any]) -> str:
    """What a pydantic error says: for a check of ours (a `ValueError` in a validator) its
    own message, without pydantic's "Value error, " before it."""
    message = str(error.get("msg", ""))
    # pydantic's template for the type (FastAPI's errors keep no `ctx` to read it from)
    return message.removeprefix("Value error, ") if error.get("type") == "value_error" else message
