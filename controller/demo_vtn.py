"""`gridpilot demo --vtn`: a utility's VTN beside the demo plant (the VTN simulator on
loopback), the controller's VEN pointed at it, and one scripted event the utility sends: an
import cap of `DEMO_CAP_W` from a minute after start, for five minutes. Watch it arrive in
`/v1/events` (source `openadr`), the grid draw held under it, the reports at the VTN, and its
M&V in `/v1/events/{id}/performance` once over."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path

from controller.config import SiteConfig
from controller.dbfile import create
from controller.grid.config import OpenADRConfig
from drivers.sim.vtn import VtnServer

log = logging.getLogger("gridpilot.demo")
DEMO_CAP_W = 6e6  # the demo plant draws about 8 MW: the batteries carry the rest
DEMO_START_S, DEMO_DURATION_S = 60.0, 300.0
PROGRAM = "demo-capacity"
UTILITY = "demo-utility"
MODELS = "openadr3_client.oadr301.models"


def start_vtn(site: SiteConfig, port: int) -> tuple[VtnServer, SiteConfig, str]:
    """The VTN, started; the site with its VEN on it; the utility's secret."""
    ven_secret, utility_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    vtn = VtnServer({"gridpilot": ven_secret, UTILITY: utility_secret}, site.api_host, port)
    vtn.start()
    secret_file = Path(site.data_dir) / "openadr-client-secret"
    create(secret_file)  # 0600 in a 0700 folder
    secret_file.write_text(ven_secret)
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # the simulator speaks plain HTTP
    openadr = OpenADRConfig(
        enabled=True,
        vtn_url=vtn.url,
        token_url=vtn.token_url,
        client_id="gridpilot",
        client_secret_file=secret_file,
        allow_http=True,
        ven_name=site.name,
        programs=[PROGRAM],
        poll_s=5.0,
        report_s=30.0,
    )
    log.info("demo VTN serving", extra={"url": vtn.url, "program": PROGRAM})
    return vtn, site.model_copy(update={"openadr": openadr}), utility_secret


def script_event(vtn: VtnServer, secret: str, stop: threading.Event) -> None:
    """The utility's side, on a thread: the program, then the event (the library's BL
    client, as a utility's own software would make them)."""
    from openadr3_client._models.common.interval import Interval
    from openadr3_client._models.common.interval_period import IntervalPeriod
    from openadr3_client.bl.http_factory import BusinessLogicHttpClientFactory
    from openadr3_client.version import OADRVersion

    bl = BusinessLogicHttpClientFactory.create_http_bl_client(
        vtn.url, UTILITY, secret, vtn.token_url, allow_insecure_http=True,
        version=OADRVersion.OADR_301,
    )  # fmt: skip
    program = bl.programs.create_program(
        import_module(f"{MODELS}.program.program").NewProgram(program_name=PROGRAM)
    )
    if stop.wait(5.0):
        return
    payloads = import_module(f"{MODELS}.event.event_payload")
    kind = payloads.EventPayloadType.IMPORT_CAPACITY_LIMIT
    start = datetime.now(UTC) + timedelta(seconds=DEMO_START_S)
    event = bl.events.create_event(
        import_module(f"{MODELS}.event.event").NewEvent(
            program_id=program.id,
            event_name="demo import cap",
            payload_descriptors=(payloads.EventPayloadDescriptor(payload_type=kind, units="KW"),),
            intervals=(
                Interval(
                    id=0,
                    interval_period=IntervalPeriod(
                        start=start, duration=timedelta(seconds=DEMO_DURATION_S)
                    ),
                    payloads=(payloads.EventPayload(type=kind, values=(DEMO_CAP_W / 1e3,)),),
                ),
            ),
        )
    )
    log.info(
        "demo utility sent an event",
        extra={"event": event.id, "cap_w": DEMO_CAP_W, "start": start.isoformat(),
               "duration_s": DEMO_DURATION_S, "at": time.time()},
    )  # fmt: skip
