"""Options models: the pydantic bases every spec section and plugin validates with.

`Strict` refuses unknown fields (a typo must never be silently ignored); `Open` keeps
extra fields for the plugin a section names to validate (`validate_options`). Every
failure is a SpecError naming the dotted field path."""

import typing

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from .errors import SpecError, spec_error_from_pydantic


def numeric(annotation) -> bool:
    """Whether a field takes numbers (int or float, maybe among other types) and not booleans."""
    kinds = set(typing.get_args(annotation)) or {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


class NoBoolNumbers(BaseModel):
    """`true` is not the number 1: a boolean given for a numeric field is an error (pydantic
    would convert it)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, bool) and field is not None and numeric(field.annotation):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


class Strict(NoBoolNumbers):
    """Unknown fields are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Open(NoBoolNumbers):
    """Fixed fields plus extra ones that a plugin validates in a second pass."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class NoOptions(Strict):
    """A plugin without options."""


def validate_options(model: type[BaseModel], values: dict | None, prefix: str, context: dict | None = None) -> dict:
    """`values` validated by `model`, defaults filled in, as a JSON-ready dict."""
    try:
        return model.model_validate(values or {}, context=context).model_dump(mode="json")
    except ValidationError as err:
        error = spec_error_from_pydantic(err, prefix, model)
        if "unknown field" in error.message and "allowed" not in error.message:
            allowed = ", ".join(sorted(model.model_fields)) or "none"
            error = SpecError(error.path, f"{error.message} (allowed here: {allowed})")
        raise error from None
