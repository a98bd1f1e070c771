"""OpenAI-compatible API (FastAPI + uvicorn) in front of the Triton ensemble.

Modules: protocol (request bodies), chat (chat template, image parts), mapping (request ->
Generation: validated ensemble inputs), triton (asyncio gRPC streaming client), results (response
bodies and stream chunks), embeddings (/v1/embeddings placeholder), errors (OpenAI error format),
app (routes, SSE, disconnects), server (CLI: `python -m llm_core.serving.openai`).
"""
