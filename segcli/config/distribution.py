"""One key of an experiment file's `search:` block: what `segcli tune` samples for it. Pydantic only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SearchDistribution(BaseModel):
    """One key of a `search:` block: the values `segcli tune` samples for it (exactly one kind)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    uniform: tuple[float, float] | None = None
    """[low, high]: any number in between, evenly."""
    log_uniform: tuple[float, float] | None = None
    """[low, high], low > 0: evenly on a log scale (learning rates, weight decay)."""
    integer: tuple[int, int] | None = Field(None, alias="int")
    """[low, high]: a whole number, both ends included."""
    choice: list[Any] | None = None
    """Two or more values (text, numbers, true/false, null), one of them."""

    @field_validator("choice")
    @classmethod
    def _plain_values(cls, value: list[Any] | None) -> list[Any] | None:
        for item in value or []:
            if not isinstance(item, (str, bool, int, float, type(None))):
                raise ValueError(
                    f"choice values are text, numbers, true/false or null, not {item!r}; to search over blocks "
                    "(transform lists, ...), write one experiment per block and tune each"
                )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDistribution:
        given = [name for name in ("uniform", "log_uniform", "integer", "choice") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give one of uniform, log_uniform, int or choice, e.g. {log_uniform: [1e-4, 1e-2]}")
        if self.choice is not None:
            if len(self.choice) < 2 or len({repr(value) for value in self.choice}) != len(self.choice):
                raise ValueError(f"choice {self.choice} needs two or more different values")
            return self
        low, high = self.uniform or self.log_uniform or self.integer
        if not low < high:
            raise ValueError(f"empty range [{low}, {high}]: write [low, high] with low below high")
        if self.log_uniform is not None and low <= 0:
            raise ValueError(f"log_uniform [{low}, {high}] needs a positive low end (a log scale never reaches 0)")
        return self

    @property
    def kind(self) -> str:
        return (
            "int"
            if self.integer is not None
            else next(name for name in ("uniform", "log_uniform", "choice") if getattr(self, name) is not None)
        )

    @property
    def bounds(self) -> tuple[float, float] | None:
        """[low, high] of a range; None for a choice."""
        return self.uniform or self.log_uniform or self.integer
