"""Everything the Triton model repository needs, importable without triton_python_backend_utils.

request/prompt/images/preprocess: validation and inputs of the ensemble; visual/visual_cache:
image embeddings; llm_service: the decoupled llm step (coalesced streaming, cancellation);
postprocess: exact text deltas; metrics; cancel_relay; launcher/tritonserver_env/server_process:
starting tritonserver. See docs/SERVING.md.
"""
