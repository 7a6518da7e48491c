"""The HTTP API: routers, the request/response contract, error mapping and SSE."""
