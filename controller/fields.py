"""The validated building blocks of every configuration section: strict models, names, ports,
durations, and a user with a password."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

Identifier = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]
MIN_POWER_W = 1e3  # 1 kW: an import cap or a shed target below it is no site's
MAX_POWER_W = 1e10  # 10 GW: above it, no site's either


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Credentials(Strict):
    """A user name and its password (given, or better read from a file), both or neither."""

    username: str | None = Field(None, min_length=1, max_length=256, description="user name")
    password: SecretStr | None = Field(None, description="better: password_file")
    password_file: FilePath | None = Field(
        None, description="a file holding the password (e.g. a mounted secret)"
    )

    @model_validator(mode="after")
    def _user_and_password(self) -> Credentials:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        has_password = self.password is not None or self.password_file is not None
        if (self.username is None) == has_password:
            raise ValueError("username and a password go together")
        return self

    def password_text(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\n")
        return self.password.get_secret_value() if self.password is not None else None
