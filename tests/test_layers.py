"""Layered archives: PYCDSARCHIVE=base.img:app.img.  One finder per layer,
in order; the first layer holding a valid entry serves the module;
pycds.stats() counts each lookup once, by its final outcome; a missing
layer is one warning and the others still serve; `pycds-dump info` shows
each layer."""
import json
import os
import subprocess

from pipeline_fixtures import venv, run, env_for, parse_verbose, write  # noqa: F401

STATS = ("import json, sys, pycds; print('STATS ' + json.dumps("
         "{'all': pycds.stats(), 'layers': pycds.layer_stats()}), "
         "file=sys.stderr)")


def trace_dump(venv, cwd, argv, lst, img):
    run(venv, argv, cwd=cwd, mode="TRACE", lst=lst, check=True)
    run(venv, [], cwd=cwd, mode="DUMP", lst=lst, archive=img, check=True)


def share(venv, cwd, code, archive, **kw):
    cp = run(venv, ["-c", code + "\n" + STATS], cwd=cwd, mode="SHARE",
             archive=archive, verbose=2, **kw)
    assert cp.returncode == 0, cp.describe()
    cp.verbose = parse_verbose(cp.stderr)
    line = [ln for ln in cp.stderr.splitlines() if ln.startswith("STATS ")]
    cp.stats = json.loads(line[-1][6:])
    return cp


def make_layers(venv, tmp_path):
    app = tmp_path / "app"
    write(app / "appmod.py", "import colorsys\nVALUE = 1\n")
    write(app / "other.py", "VALUE = 2\n")
    base, top = tmp_path / "base.img", tmp_path / "app.img"
    # base: stdlib modules only; app layer: the app's modules.
    trace_dump(venv, app, ["-c", "import json, fractions"],
               tmp_path / "base.lst", base)
    trace_dump(venv, app, ["-c", "import appmod, other"],
               tmp_path / "app.lst", top)
    return app, base, top


def test_two_layers_serve_and_count_once(venv, tmp_path):
    app, base, top = make_layers(venv, tmp_path)
    cp = share(venv, app, "import json, fractions, appmod, other",
               "%s:%s" % (base, top))
    served = cp.verbose.served_set
    assert {"json", "fractions", "appmod", "other", "colorsys"} <= served, \
        cp.describe()
    assert not cp.verbose.warnings
    s, layers = cp.stats["all"], cp.stats["layers"]
    assert [layer["path"] for layer in layers] == [str(base), str(top)]
    assert s["served"] == sum(layer["served"] for layer in layers)
    assert s["served"] == len(cp.verbose.served)
    # appmod was missed by the base layer and served by the app layer:
    # counted as served only.
    assert "appmod" in layers[0]["reasons"]
    assert "appmod" not in s["reasons"]
    assert s["stale"] == 0 and s["refused"] == 0
    # Only lookups no layer served are misses.
    assert s["missed"] == layers[1]["missed"]


def test_stale_in_first_layer_served_by_second(venv, tmp_path):
    app = tmp_path / "app"
    write(app / "appmod.py", "VALUE = 1\n")
    old, new = tmp_path / "old.img", tmp_path / "new.img"
    trace_dump(venv, app, ["-c", "import appmod"], tmp_path / "a.lst", old)
    (app / "appmod.py").write_text("VALUE = 22  # edited\n")
    trace_dump(venv, app, ["-c", "import appmod"], tmp_path / "b.lst", new)
    cp = share(venv, app, "import appmod; print(appmod.VALUE)",
               "%s:%s" % (old, new))
    assert cp.stdout.strip() == "22"
    assert "appmod" in cp.verbose.stale          # by the first layer
    assert "appmod" in cp.verbose.served_set     # by the second
    s = cp.stats["all"]
    assert s["stale"] == 0 and "appmod" not in s["reasons"]
    assert cp.stats["layers"][0]["stale"] == 1

    # Stale in the only layer that holds it: a stale lookup, not a miss.
    other = tmp_path / "other.img"
    trace_dump(venv, app, ["-c", "import colorsys"], tmp_path / "c.lst",
               other)
    cp = share(venv, app, "import appmod", "%s:%s" % (old, other))
    assert len(cp.stats["layers"]) == 2
    assert cp.stats["layers"][1]["reasons"]["appmod"] == "not in the archive"
    s = cp.stats["all"]
    assert s["reasons"]["appmod"].startswith("the source"), s
    assert s["stale"] == 1


def test_missing_layer_one_warning(venv, tmp_path):
    app, base, top = make_layers(venv, tmp_path)
    missing = tmp_path / "nope.img"
    cp = share(venv, app, "import json, appmod",
               os.pathsep.join(map(str, [missing, base, "", top])))
    assert len(cp.verbose.warnings) == 1, cp.describe()
    assert "nope.img" in cp.verbose.warnings[0]
    assert {"json", "appmod"} <= cp.verbose.served_set
    assert len(cp.stats["layers"]) == 2


def test_info_shows_each_layer(venv, tmp_path):
    app, base, top = make_layers(venv, tmp_path)
    env = env_for()
    text = subprocess.run([venv.pycds_dump, "info", "%s:%s" % (base, top)],
                          capture_output=True, text=True, env=env)
    assert text.returncode == 0, text.stderr
    assert "== layer 1: %s" % base in text.stdout
    assert "== layer 2: %s" % top in text.stdout
    js = subprocess.run([venv.pycds_dump, "info", "--json", str(base),
                         str(top)], capture_output=True, text=True, env=env)
    layers = json.loads(js.stdout)["layers"]
    assert [layer["layer"] for layer in layers] == [1, 2]
    names2 = {e["name"] for e in layers[1]["entries"]}
    names1 = {e["name"] for e in layers[0]["entries"]}
    assert layers[1]["hidden"] == sorted(names1 & names2)
    # From the environment, and a missing layer: exit 1, others shown.
    env["PYCDSARCHIVE"] = "%s:%s" % (base, tmp_path / "gone.img")
    cp = subprocess.run([venv.pycds_dump, "info", "--json"],
                        capture_output=True, text=True, env=env)
    assert cp.returncode == 1
    layers = json.loads(cp.stdout)["layers"]
    assert "error" in layers[1] and layers[0]["entries"]


def test_auto_writes_only_the_last_layer(venv, tmp_path):
    app, base, top = make_layers(venv, tmp_path)
    auto_img = tmp_path / "auto.img"
    base_before = os.stat(base).st_mtime_ns
    cp = run(venv, ["-c", "import json, fractions, appmod, other"], cwd=app,
             mode="AUTO", archive="%s:%s" % (base, auto_img), verbose=1)
    assert cp.returncode == 0, cp.describe()
    assert auto_img.exists() and os.stat(base).st_mtime_ns == base_before
    info = json.loads(subprocess.run(
        [venv.pycds_dump, "info", "--json", str(auto_img)],
        capture_output=True, text=True, env=env_for()).stdout)
    names = {e["name"] for e in info["entries"]}
    # What the base layer served is not repeated in the app layer.
    assert {"appmod", "other"} <= names
    assert "json" not in names and "fractions" not in names
