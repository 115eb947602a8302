"""The dashboard and the HTTP API: pages and the app (`server`), the JSON API (`api`) and its
OpenAPI document (`openapi`), with `templates/` and `static/`.
"""
