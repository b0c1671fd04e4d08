"""The built-in fleet of ``fleetstream up``: a simulator feeding the process's own gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetstream.simulator.delivery import DeliveryOptions
from fleetstream.simulator.realhost import real_host_for
from fleetstream.simulator.shadow import ShadowAgent
from fleetstream.simulator.simulator import Simulator
from fleetstream.simulator.transports import InProcessTransport

if TYPE_CHECKING:
    from fleetstream.runtime import Runtime


def add_simulator(runtime: Runtime) -> Simulator:
    """Attach a simulator, configured by ``settings.simulator``, to a runtime's extras.

    It sends through the gateway in the same process (no HTTP), starts after
    the engine and stops (sending what it has queued) before the bus closes. Its devices
    apply their desired ``interval_s`` (:mod:`fleetstream.simulator.shadow`).
    """
    settings = runtime.settings.simulator
    simulator = Simulator(
        settings.devices,
        settings.rate,
        settings.seed,
        runtime.clock,
        InProcessTransport(runtime.gateway.submit),
        delivery=DeliveryOptions(
            jitter_s=settings.jitter_s,
            duplicates=settings.duplicates,
            late=settings.late,
            late_delay_s=settings.late_delay_s,
        ),
        clock_skew_s=settings.clock_skew_s,
        real_host=real_host_for(settings.rate) if settings.real_host else None,
    )
    runtime.extras.append(simulator)
    runtime.extras.append(ShadowAgent(runtime.engine, simulator))  # devices follow their desired state
    runtime.info["simulator"] = simulator
    return simulator
