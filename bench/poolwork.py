"""The worker side of bench/data.py's process pools: importable by the
pool's workers (functions sent to them must live in a module).  A pool
arg worker gets the data with each task; the others load it once, in the
pool's initializer, and get only the key."""
_data = None


def init(method, path):
    global _data
    if method == "pickle":
        import pickle
        with open(path + ".pickle", "rb") as f:
            _data = pickle.load(f)
    elif method == "json":
        import json
        with open(path + ".json") as f:
            _data = json.load(f)
    elif method == "pycds":
        import pycds
        _data = pycds.load_data(path + ".data")


def ping(_):
    return None


def lookup(data, key):
    d = _data if data is None else data
    v = d[key]
    return len(v) if hasattr(v, "__len__") else v
