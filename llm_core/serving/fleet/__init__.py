"""A fleet of Triton servers from one config: `python -m llm_core.serving.fleet fleet.toml`.

config.py parses fleet.toml, gpus.py picks GPUs with enough free memory, launcher.py starts one
`llm_core.serving.launcher` per server entry concurrently, ready-checks them, restarts one that dies and
keeps a JSON state file (which servers run, where) up to date for clients.
"""
