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


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> Settings:
    return get_runtime(request).settings


def get_store(request: Request) -> Store:
    return get_runtime(request).store


def get_gateway(request: Request) -> Gateway:
    return get_runtime(request).gateway


def get_engine(request: Request) -> Engine:
    return get_runtime(request).engine


def get_hub(request: Request) -> Hub:
    return get_runtime(request).hub


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
GatewayDep = Annotated[Gateway, Depends(get_gateway)]
EngineDep = Annotated[Engine, Depends(get_engine)]
HubDep = Annotated[Hub, Depends(get_hub)]
