"""The HTTP API: FastAPI app, dependencies, error mapping, wire schemas and routes."""
