"""`gridpilot`: the command line. `demo` runs everything; `run` the controller; `sim` the plant."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from controller.cli_admin import db_app, keys_app
from controller.cli_common import (
    ApiPortOpt,
    ConfigOpt,
    DataDirOpt,
    LogLevelOpt,
    refused,
    site_of,
    storage_errors_said,
)
from controller.config import SiteConfig
from controller.logs import setup_logging
from controller.notify import notify
from controller.replay.trace import TraceError
from controller.sitefile import device_maps

if TYPE_CHECKING:
    from controller.replay.events import Announced
    from controller.replay.run import ReplaySettings
    from controller.replay.trace import Trace

# The controller, the replay (scipy, matplotlib) and the certificates are imported by the
# commands that use them: `gridpilot keys`, `db`, `check-config` and `notify` start in a
# fraction of the time (tests and scripts call them often).

app = typer.Typer(
    help="gridpilot: a real-time, grid-interactive controller for AI data centers.",
    no_args_is_help=True,
    add_completion=False,
)
log = logging.getLogger("gridpilot")


def _start(
    entry: Callable[[SiteConfig], Coroutine[None, None, None]],
    config: Path | None,
    log_level: str,
    api_port: int | None = None,
    data_dir: Path | None = None,
    port_offset: int = 0,
) -> None:
    """Load the site, then run `entry` until SIGINT/SIGTERM; start-up faults exit 1."""
    setup_logging(log_level)
    site = site_of(config, api_port, data_dir, port_offset)
    try:
        with storage_errors_said():  # the SQLite file damaged or gone: say what to do
            asyncio.run(entry(site))
    except OSError as exc:  # a port taken, a device address that cannot be bound
        log.error("cannot start", extra={"error": str(exc)})
        raise typer.Exit(1) from None


@app.command()
def demo(
    config: ConfigOpt = None,
    api_port: ApiPortOpt = None,
    data_dir: DataDirOpt = None,
    log_level: LogLevelOpt = "INFO",
    port_offset: Annotated[
        int,
        typer.Option(
            "--port-offset",
            min=0,
            max=20000,
            help="move every port (API, devices, token server) by this: a second demo beside "
            "the first, e.g. --port-offset 100 --data-dir /tmp/gp2",
        ),
    ] = 0,
    vtn: Annotated[
        bool,
        typer.Option(
            "--vtn",
            help="also a utility's OpenADR 3 VTN (simulated) with one scripted import-cap "
            "event a minute in; the controller's VEN follows it",
        ),
    ] = False,
    vtn_port: Annotated[
        int, typer.Option("--vtn-port", min=1, max=65535, help="the VTN's port (with --vtn)")
    ] = 8081,
) -> None:
    """Every simulator, the controller, the API and metrics, in one process on loopback."""
    from controller.demo import run_demo

    entry = functools.partial(run_demo, vtn_port=vtn_port + port_offset) if vtn else run_demo
    _start(entry, config, log_level, api_port, data_dir, port_offset)


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="site file (YAML)")],
    api_port: ApiPortOpt = None,
    data_dir: DataDirOpt = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """The controller alone, against the devices the site file names."""
    from controller.demo import run_controller

    _start(run_controller, config, log_level, api_port, data_dir)


@app.command()
def sim(config: ConfigOpt = None, log_level: LogLevelOpt = "INFO") -> None:
    """The simulated plant alone: one server per device of the site file, on its address."""
    from controller.demo import run_simulators

    _start(run_simulators, config, log_level)


TraceArg = Annotated[Path, typer.Argument(help="CSV with t_s and gpu_power_w columns")]
GpusOpt = Annotated[int, typer.Option("--gpus", help="GPUs that swing together")]
BaseOpt = Annotated[float, typer.Option("--base-w", help="non-GPU site load, W")]
RampOpt = Annotated[float, typer.Option("--ramp-w-per-s", help="grid ramp limit, W/s")]
TauOpt = Annotated[float | None, typer.Option("--lowpass-tau-s", help="low-pass time constant, s")]
WindowOpt = Annotated[
    float | None,
    typer.Option("--average-window-s", help="moving average before the low-pass, s (0: none)"),
]
EnergyReturnOpt = Annotated[
    float | None,
    typer.Option("--energy-return-s", help="grid replaces the battery's energy over this, s"),
]
FromOpt = Annotated[
    float, typer.Option("--from-s", min=0.0, help="replay from this time on, s (e.g. steady state)")
]
SiteOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="take the dispatch and planner settings from a site file"),
]


def _replay_settings(config: Path | None, **values: object) -> ReplaySettings:
    """Validated replay settings; each bad value exits 2 naming its option."""
    from controller.replay.run import ReplaySettings

    sections: dict[str, object] = {}
    if config:  # the planner's too, so a replay plans as the site would (its job_w aside)
        site = site_of(config)
        sections = {"dispatch": site.dispatch, "planner": site.planner}
    try:
        return ReplaySettings(**sections, **values)
    except ValidationError as exc:
        lines = [
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']} (got {e['input']!r})"
            for e in exc.errors()
        ]
        raise refused("invalid replay settings:\n  " + "\n  ".join(lines)) from None


def _read(trace: Path, from_s: float = 0.0) -> Trace:
    from controller.replay.trace import read_trace

    try:
        return read_trace(trace).starting_at(from_s)
    except TraceError as exc:
        raise refused(exc) from None


def _notices(
    path: Path | None, job_lead_s: float, pause_lead_s: float, job_w: float
) -> tuple[Announced, ...]:
    from controller.replay.events import read_events

    if path is None:
        return ()
    try:
        return read_events(path, job_lead_s, pause_lead_s, job_w)
    except TraceError as exc:
        raise refused(exc) from None


@app.command()
def replay(
    trace: TraceArg,
    gpus: GpusOpt = 10_000,
    base_w: BaseOpt = 2e6,
    ramp_w_per_s: RampOpt = 5e5,
    battery_w: Annotated[float, typer.Option("--battery-w", help="battery power, W")] = 20e6,
    battery_wh: Annotated[float, typer.Option("--battery-wh", help="battery energy, Wh")] = 20e6,
    config: SiteOpt = None,
    lowpass_tau_s: TauOpt = None,
    average_window_s: WindowOpt = None,
    energy_return_s: EnergyReturnOpt = None,
    from_s: FromOpt = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
    plot_to: Annotated[Path | None, typer.Option("--plot", help="draw the run to a PNG")] = None,
    record_to: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="also write the run as the recorder does, under DIR/recorder, for "
            "`gridpilot report --data-dir DIR`",
        ),
    ] = None,
    bound: Annotated[bool, typer.Option(help="solve the perfect-foresight LP bound")] = True,
    events: Annotated[
        Path | None,
        typer.Option(
            "--events",
            help="workload notices from an events file (*.events.csv): train_ready → job start, "
            "checkpoint_start/_end → pause start/end; the planner looks ahead",
        ),
    ] = None,
    job_lead_s: Annotated[
        float, typer.Option("--job-lead-s", min=0.0, help="a job's notice comes this early, s")
    ] = 30.0,
    pause_lead_s: Annotated[
        float, typer.Option("--pause-lead-s", min=0.0, help="a pause's notice comes this early, s")
    ] = 5.0,
    job_w_per_gpu: Annotated[
        float,
        typer.Option("--job-w-per-gpu", help="what a GPU of an announced job adds to the draw, W"),
    ] = 470.0,
    figures_from_s: Annotated[
        float | None,
        typer.Option(
            "--figures-from-s",
            min=0.0,
            help="count the figures and the bound from this time on, the controller (and what "
            "it learned) warm from the run before; --from-s starts it cold there",
        ),
    ] = None,
    learn_rhythm: Annotated[
        bool,
        typer.Option(
            "--learn-rhythm",
            help="learn the workload's rhythm (step period, pauses, levels) from the load as it "
            "comes; the planner looks ahead to the pauses it predicts",
        ),
    ] = False,
) -> None:
    """Run the dispatch core over a trace: smoothing figures and the perfect-foresight bound."""
    settings = _replay_settings(
        config,
        ramp_w_per_s=ramp_w_per_s,
        gpus=gpus,
        base_w=base_w,
        battery_w=battery_w,
        battery_wh=battery_wh,
        lowpass_tau_s=lowpass_tau_s,
        average_window_s=average_window_s,
        energy_return_s=energy_return_s,
        job_w_per_gpu=job_w_per_gpu,
    )
    from controller.dispatch.rhythm import RhythmSettings
    from controller.replay.record import RecordExistsError, record_run
    from controller.replay.report import print_figures, replay_progress
    from controller.replay.run import plot, report, simulate, window

    tr = _read(trace, from_s)
    notices = _notices(events, job_lead_s, pause_lead_s, settings.gpus * settings.job_w_per_gpu)
    load = tr.site_load_w(settings.gpus, settings.base_w)
    with replay_progress(len(load)) as progress:
        learn = RhythmSettings() if learn_rhythm else None
        run = simulate(load, tr.dt_s, settings, progress, notices, float(tr.t_s[0]), learn)
        counted = run
        if figures_from_s is not None:
            first = min(int((tr.t_s < figures_from_s).sum()), len(load) - 2)
            counted = window(run, first, tr.dt_s)
        result = report(counted, tr.dt_s, settings, bound)
    if plot_to is not None:
        plot(run, tr.dt_s, str(plot_to), settings, trace.name)
    if record_to is not None:
        try:
            record_run(run, tr.dt_s, settings, record_to)
        except (RecordExistsError, OSError) as exc:
            raise refused(exc) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_figures(result, trace)


@app.command()
def size(
    trace: TraceArg,
    ramp_w_per_s: RampOpt = 5e5,
    gpus: GpusOpt = 10_000,
    base_w: BaseOpt = 2e6,
    config: SiteOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the sizes as JSON")] = False,
) -> None:
    """The smallest battery with which the controller holds the ramp limit, beside the LP's."""
    from controller.replay.report import print_sizing
    from controller.replay.run import size as size_battery

    settings = _replay_settings(config, ramp_w_per_s=ramp_w_per_s, gpus=gpus, base_w=base_w)
    tr = _read(trace)
    result = size_battery(tr.site_load_w(settings.gpus, settings.base_w), tr.dt_s, settings)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
    else:
        print_sizing(result, trace, ramp_w_per_s)


@app.command("report")
def compliance_report(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="a site's data folder (or a replay's --record)")
    ],
    from_t: Annotated[
        str | None, typer.Option("--from", help="unix s or ISO 8601 (UTC if no offset)")
    ] = None,
    to_t: Annotated[str | None, typer.Option("--to", help="unix s or ISO 8601")] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="generic, large_load, or a YAML file")
    ] = "generic",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    html_to: Annotated[
        Path | None, typer.Option("--html", help="write a self-contained page with plots")
    ] = None,
) -> None:
    """The grid-compliance report over a time range of the recorder: ramps per window, band
    energy, frequency events, caps, captures, battery use, each check against the profile.
    Exit status 0 when every check holds, 1 when one fails, 2 on a bad input."""
    from controller.recorder.reader import RecorderDataError
    from controller.report.html import render_html
    from controller.report.profile import ProfileError
    from controller.report.source import ReportInputError, parse_time, profile_named, report_of
    from controller.report.terminal import print_report

    try:
        from_s = parse_time(from_t) if from_t is not None else None
        to_s = parse_time(to_t) if to_t is not None else None
        chosen = profile_named(profile)
        result = report_of(data_dir, from_s, to_s, chosen, plots=html_to is not None)
        if html_to is not None:
            html_to.write_text(render_html(result))
    except (ReportInputError, ProfileError, RecorderDataError, ValueError, OSError) as exc:
        raise refused(exc) from None
    result.pop("plots", None)
    if as_json:
        typer.echo(json.dumps(result, indent=2, allow_nan=False))
    else:
        print_report(result)
    if result["result"] == "fail":
        raise typer.Exit(1)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="site file (YAML)")]) -> None:
    """Validate a site file whole (fields, every device's map and the roles its kind needs,
    the demo plant's settings); print its devices, or what is wrong and exit 2."""
    site = site_of(config)
    maps = device_maps(site)
    for module in site.modules:
        for d in module.devices:
            typer.echo(
                f"{module.id:12} {d.id:12} {d.kind:6} {d.host}:{d.port:<6} {maps[d.id].source}"
            )


app.command("notify")(notify)


app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")


@app.command()
def certs(
    out: Annotated[Path, typer.Option("--out", help="folder for the PEM files")],
    host: Annotated[
        list[str], typer.Option("--host", help="the devices' IP or DNS name (repeat for more)")
    ],
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="valid for")] = 365,
) -> None:
    """Make a site CA, a device certificate and a controller certificate for secured links
    (Modbus/TCP Security, OPC UA Basic256Sha256), and one for the HTTPS API (api_tls).
    Refuses to overwrite existing files."""
    if out.exists() and any(out.glob("*.pem")):
        raise refused(f"{out} already holds certificates; choose an empty folder")
    from drivers.certs import make_site_certs

    made = make_site_certs(out, host, days)
    for name, path in (
        ("site CA", made.ca),
        ("device certificate", made.device.certificate),
        ("device key", made.device.private_key),
        ("controller certificate", made.controller.certificate),
        ("controller key", made.controller.private_key),
        ("API certificate", made.api.certificate),
        ("API key", made.api.private_key),
    ):
        typer.echo(f"{name:24} {path}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
