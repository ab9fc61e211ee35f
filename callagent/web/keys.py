"""Typed keys of the state the app holds (no module globals)."""

from __future__ import annotations

import weakref

from aiohttp import web

from ..commands import SessionCommands
from ..metrics import Metrics
from ..settings import Settings
from ..stages import StageTable
from ..store import Store
from ..turns import TurnEngine
from ..upstream.base import Upstream

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STAGES = web.AppKey("stages", StageTable)
STORE = web.AppKey("store", Store)
UPSTREAM = web.AppKey("upstream", Upstream)
ENGINE = web.AppKey("engine", TurnEngine)
COMMANDS = web.AppKey("commands", SessionCommands)
SOCKETS = web.AppKey("sockets", weakref.WeakSet[web.WebSocketResponse])
