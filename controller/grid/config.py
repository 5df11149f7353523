"""The site file's `openadr:` section: which VTN to follow, as which VEN, and what its signals
mean for this site.

Off by default. The client secret is read from a file (a mounted secret) or the environment
(`GRIDPILOT_OPENADR__CLIENT_SECRET`); it is never logged or shown in an error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, FilePath, SecretStr, model_validator

from controller.fields import MAX_POWER_W, MIN_POWER_W, PositiveSeconds, Strict

Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2048)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")]
Level = Annotated[int, Field(ge=1, le=3)]
Power = Annotated[float, Field(ge=MIN_POWER_W, le=MAX_POWER_W)]  # W, like an operator's event


class Action(Strict):
    """What a signal asks of the site: an import cap, or a load to shed (one of them), W."""

    import_cap_w: Power | None = Field(None, description="cap the grid import at, W")
    shed_w: Power | None = Field(None, description="shed this much load, W")

    @model_validator(mode="after")
    def _one(self) -> Action:
        if (self.import_cap_w is None) == (self.shed_w is None):
            raise ValueError("give import_cap_w or shed_w, one of them")
        return self

    @property
    def event(self) -> tuple[Literal["import_cap", "shed"], float]:
        if self.import_cap_w is not None:
            return "import_cap", self.import_cap_w
        assert self.shed_w is not None
        return "shed", self.shed_w


class PriceRule(Action):
    """A price above `above` (in the program's currency and units) becomes this action."""

    above: float = Field(ge=-1e6, le=1e6, description="a price above this triggers the action")


class OpenADRConfig(Strict):
    """An OpenADR 3 VEN: gridpilot reads a VTN's events for its programs, turns them into import
    caps and sheds, and reports what the site drew and delivered."""

    enabled: bool = Field(False, description="false: no VTN; events come only from operators")
    version: Literal["3.0.1", "3.1.0"] = Field("3.0.1", description="the VTN's OpenADR version")
    vtn_url: Url = Field("https://vtn.invalid/openadr3", description="the VTN's base URL")
    token_url: Url | None = Field(
        None, description="OAuth2 token endpoint; none: discovered from the VTN (3.1.0 only)"
    )
    client_id: str = Field("gridpilot", min_length=1, max_length=256, description="OAuth2")
    client_secret: SecretStr | None = Field(None, description="better: client_secret_file")
    client_secret_file: FilePath | None = Field(None, description="a file holding the secret")
    scopes: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=32, description="OAuth2 scopes asked for"
    )
    ven_name: Name = Field("gridpilot", description="this site's VEN name at the VTN")
    programs: list[Name] = Field(
        default_factory=list,
        max_length=64,
        description="program names to follow; empty: every program the VTN shows this VEN",
    )
    poll_s: float = Field(10.0, ge=1.0, le=3600.0, description="between two reads of events, s")
    callback_url: Url | None = Field(
        None,
        description="where the VTN reaches this controller's POST /openadr/notify: subscribed "
        "to each program's events, a change is read at once; none: polling alone",
    )
    timeout_s: PositiveSeconds = Field(5.0, description="one request to the VTN, s")
    report_s: float = Field(
        60.0, ge=5.0, le=3600.0, description="between two reports when an event asks none, s"
    )
    alarm_after_s: float = Field(
        300.0, ge=0.0, le=86400.0, description="an alarm when the VTN is out of reach this long"
    )
    ca: FilePath | None = Field(None, description="CA bundle for the VTN's certificate")
    allow_http: bool = Field(
        False, description="plain HTTP to the VTN (not spec-compliant: tests, demos)"
    )
    simple_levels: dict[Level, Action] = Field(
        default_factory=dict,
        description="what SIMPLE levels 1–3 mean here (0: nothing); a level with no entry is "
        "refused; grid alerts take the highest level given",
    )
    price_rules: list[PriceRule] = Field(
        default_factory=list,
        max_length=16,
        description="prices are recorded; they change control only through these rules",
    )

    @model_validator(mode="after")
    def _check(self) -> OpenADRConfig:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("give client_secret or client_secret_file, not both")
        if not self.enabled:
            return self
        if self.client_secret is None and self.client_secret_file is None:
            raise ValueError("an enabled VEN needs client_secret_file (or client_secret)")
        if self.token_url is None and self.version == "3.0.1":
            raise ValueError("OpenADR 3.0.1 has no token discovery: give token_url")
        if self.vtn_url.startswith("http://") and not self.allow_http:
            raise ValueError("vtn_url is plain HTTP: use HTTPS, or set allow_http (tests only)")
        return self

    def secret_text(self) -> str:
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().rstrip("\n")
        return self.client_secret.get_secret_value() if self.client_secret is not None else ""

    def strictest(self) -> Action | None:
        """A grid alert's action: the highest SIMPLE level this site has a rule for."""
        return self.simple_levels[max(self.simple_levels)] if self.simple_levels else None
