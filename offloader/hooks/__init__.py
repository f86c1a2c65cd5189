"""Adapters that connect the offloader core to host libraries.

Each module imports only its own host library:

- `offloader.hooks.httpx`: httpx event hooks and transports.
- `offloader.hooks.asgi`: an ASGI reverse proxy and the pieces a
  hand-rolled proxy loop needs.
- `offloader.hooks.aiohttp`: an httpx transport over aiohttp's client,
  the engine `offloader serve` runs on by default.
"""
