"""The HTTP API (FastAPI): operators, requesters and identity systems drive Cardline."""
