"""Dependencies routes take, as ``Annotated`` aliases (tests override them through the app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleetstream.config import Settings
from fleetstream.engine.fanout import Hub
from fleetstream.engine.pipeline import Engine
from fleetstream.ingest.gateway import Gateway
from fleetstream.ports import Store
from fleetstream.runtime import Runtime


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# Dependencies are ``async def``: FastAPI runs plain ``def`` ones in a thread pool, a thread hop
# per dependency per request on the ingest hot path.
async def get_runtime(request: Request) -> Runtime:
    return _runtime(request)


async def get_settings(request: Request) -> Settings:
    return _runtime(request).settings


async def get_store(request: Request) -> Store:
    return _runtime(request).store


async def get_gateway(request: Request) -> Gateway:
    return _runtime(request).gateway


async def get_engine(request: Request) -> Engine:
    return _runtime(request).engine


async def get_hub(request: Request) -> Hub:
    return _runtime(request).hub


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
GatewayDep = Annotated[Gateway, Depends(get_gateway)]
EngineDep = Annotated[Engine, Depends(get_engine)]
HubDep = Annotated[Hub, Depends(get_hub)]
