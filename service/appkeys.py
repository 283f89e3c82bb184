"""Typed application state: every ``web.AppKey`` the service uses, in one place."""

from __future__ import annotations

from aiohttp import web

from jobs.commands import Commands
from jobs.resources import Resources
from jobs.settings import Settings
from service.auth import TokenAuthority

SETTINGS = web.AppKey("settings", Settings)
RESOURCES = web.AppKey("resources", Resources)
COMMANDS = web.AppKey("commands", Commands)
AUTHORITY = web.AppKey("authority", TokenAuthority)
