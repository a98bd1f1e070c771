"""Fleet client CLI: `python -m llm_core.serving.fleet.cli --state fleet_state.json complete "Hi" [--stream]`
or `... embed "first text" "second text"` (prints one JSON list per text)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from llm_core.serving.fleet.client import FleetClient, FleetUnavailableError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", default="fleet_state.json", help="the fleet launcher's state file")
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--growth-factor", type=float, default=2.0)
    sub = parser.add_subparsers(dest="command", required=True)
    complete = sub.add_parser("complete")
    complete.add_argument("prompt")
    complete.add_argument("--max-tokens", type=int, default=64)
    complete.add_argument("--stream", action="store_true")
    embed = sub.add_parser("embed")
    embed.add_argument("texts", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[fleet-client] %(message)s", stream=sys.stderr)
    client = FleetClient(state_file=args.state, max_retries=args.max_retries, growth_factor=args.growth_factor)
    try:
        if args.command == "embed":
            for vector in client.embed(args.texts):
                print(json.dumps([round(float(x), 6) for x in vector]))
        elif args.stream:
            for piece in client.stream(args.prompt, args.max_tokens):
                print(piece, end="", flush=True)
            print()
        else:
            print(client.complete(args.prompt, args.max_tokens))
    except FleetUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
