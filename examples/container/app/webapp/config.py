import argparse
import json
import logging


def load(argv):
    p = argparse.ArgumentParser(prog="app")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--warmup", action="store_true",
                   help="start up and exit (used at image build time)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return {"port": args.port, "routes": json.loads('["/", "/health"]')}
