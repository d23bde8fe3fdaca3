"""Fixtures of the ecosystem tests (the fake hub and what it serves)."""

from tests.ecosystem.hub_fixtures import fake_hub, hub_files, online  # noqa: F401
