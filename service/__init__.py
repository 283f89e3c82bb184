"""Handover's HTTP edge: app factory, routes, auth, problem responses, OpenAPI, CLI."""
