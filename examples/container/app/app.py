"""A small service's start-up: what a container runs (see examples/Dockerfile)."""
import sys

from webapp import config, handlers

if __name__ == "__main__":
    app = handlers.make_app(config.load(sys.argv[1:]))
    print("ready:", app)
