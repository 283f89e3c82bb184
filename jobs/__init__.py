"""Handover's domain and work: jobs, their store and queue, the worker, pipelines, archives."""
