"""Typed application state: every ``web.AppKey`` the service uses, in one place."""

from __future__ import annotations

from aiohttp import web

from jobs.erasure import ErasurePipeline
from jobs.export import ExportPipeline
from jobs.resources import Resources
from jobs.settings import Settings
from service.auth import TokenAuthority

SETTINGS = web.AppKey("settings", Settings)
RESOURCES = web.AppKey("resources", Resources)
EXPORTS = web.AppKey("exports", ExportPipeline)
ERASURES = web.AppKey("erasures", ErasurePipeline)
AUTHORITY = web.AppKey("authority", TokenAuthority)
