"""`edgevlm serve`: an OpenAI-compatible HTTP server and a live webcam page over one model (the [server] extra:
Starlette, uvicorn, prometheus_client). Built on the public API only, like the CLI. The app:
`edgevlm.server.app.create_app(edgevlm.load(...), ServerSettings(...))`, served by any ASGI server."""
