"""Process entry points: the demo (plant + controller), the controller alone, the plant alone."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from controller.config import SiteConfig
from controller.opsdb import Actor, Conflict, OpsDB
from controller.service import DB_FILE, Controller, stop_on_signals
from controller.sitefile import plant_of
from drivers.sim.stack import SimulatorStack, SimulatorThread

log = logging.getLogger("gridpilot")
DEMO = Actor(None, "demo", "admin")  # who the audit log names for the demo's own key


async def run_controller(site: SiteConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        await Controller(site).run(stop)


async def run_demo(
    site: SiteConfig, stop: asyncio.Event | None = None, vtn_port: int | None = None
) -> None:
    """The plant, the controller, and with `vtn_port` a utility's VTN and its one event."""
    if vtn_port is not None:
        await run_with_vtn(site, stop, vtn_port)
        return
    db = OpsDB(site.data_dir / DB_FILE, site.limits)
    new_key = None
    try:
        new_key = db.ensure_demo_key(os.environ.get("GRIDPILOT_API_KEY"), DEMO)
    except Conflict as exc:  # e.g. the key given was revoked: the demo runs, without it
        log.warning("GRIDPILOT_API_KEY not used", extra={"reason": str(exc)})
    finally:
        db.close()
    if new_key:  # shown once; only its hash is kept
        print(f"demo admin API key (shown once, keep it): {new_key}", flush=True)
        print(f"  curl -H 'Authorization: Bearer {new_key}' "
              f"http://{site.api_host}:{site.api_port}/v1/state", flush=True)  # fmt: skip
    # The plant runs on its own thread and event loop: its physics keeps time on its own.
    plant = SimulatorThread(plant_of(site))
    await asyncio.to_thread(plant.start)
    try:
        await run_controller(site, stop)
    finally:
        await asyncio.to_thread(plant.stop)
        log.info("simulators stopped")


async def run_with_vtn(site: SiteConfig, stop: asyncio.Event | None, port: int) -> None:
    from controller.demo_vtn import script_event, start_vtn

    site.data_dir.mkdir(parents=True, exist_ok=True)
    vtn, site, secret = await asyncio.to_thread(start_vtn, site, port)
    done = threading.Event()
    utility = threading.Thread(
        target=script_event, args=(vtn, secret, done), name="demo-utility", daemon=True
    )
    utility.start()
    try:
        await run_demo(site, stop)
    finally:
        done.set()
        await asyncio.to_thread(vtn.stop)


async def run_simulators(site: SiteConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stack = SimulatorStack(plant_of(site))
    with stop_on_signals(stop):
        await stack.start()
        try:
            await stop.wait()
        finally:
            await stack.stop()
            log.info("simulators stopped")
