"""What a user sees: whether pycds did anything (PYCDSVERBOSE's summary,
`pycds-dump status`), warnings for settings that cannot work, environment
variables read alike, and messages that say what differs.

Run the way a user runs pycds: the venv's interpreter with pycds
installed by `make install` (its .pth hook in site-packages), real
archives, the installed pycds-dump."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import INTERPRETERS
from pipeline_fixtures import (env_for, venv, make_venv, run, run_tool,  # noqa: F401
                               write)

APP = "import json, colorsys, fractions\nprint('ok')\n"
_SUMMARY = re.compile(r"^pycds: summary: (\w+): (\d+) served, (\d+) missed, "
                      r"(\d+) stale, (\d+) refused; (.+)$", re.M)


def make_archive(venv, tmp_path, name="app.img"):
    """An archive of APP's modules, written by AUTO's first run."""
    write(tmp_path / "app.py", APP)
    img = tmp_path / name
    run(venv, ["app.py"], cwd=tmp_path, mode="AUTO", archive=img, check=True)
    assert img.is_file()
    return img


def status(venv, cwd, env, module=False):
    """`pycds-dump status --json` (or python -m pycds status --json):
    (exit status, report)."""
    if module:
        cp = run(venv, ["-m", "pycds", "status", "--json"], cwd=cwd,
                 env=env)
    else:
        cp = run_tool(venv, ["status", "--json"], cwd=cwd, env=env)
    assert cp.stdout, cp.describe()
    return cp.returncode, json.loads(cp.stdout)


def warnings_of(stderr):
    return [line for line in stderr.splitlines()
            if line.startswith("pycds: warning:")]


# ------------------------------------------------------------ summary line

def test_verbose_summary_line_at_exit(venv, tmp_path):
    img = make_archive(venv, tmp_path)
    cp = run(venv, ["app.py"], cwd=tmp_path, mode="SHARE", archive=img,
             verbose=1, check=True)
    lines = _SUMMARY.findall(cp.stderr)
    assert len(lines) == 1, cp.describe()
    mode, served, missed, stale, refused, layers = lines[0]
    assert mode == "SHARE" and int(served) >= 3, cp.describe()
    assert layers.startswith("%s: %s served, " % (img, served)), layers
    assert "in place" in layers or "relocated" in layers, layers
    # AUTO says it too, after its own decision at exit.
    cp = run(venv, ["app.py"], cwd=tmp_path, mode="AUTO", archive=img,
             verbose=1, check=True)
    assert [m[0] for m in _SUMMARY.findall(cp.stderr)] == ["AUTO"], \
        cp.describe()
    # No archive usable: the line says so.
    cp = run(venv, ["app.py"], cwd=tmp_path, mode="SHARE",
             archive=tmp_path / "none.img", verbose=1, check=True)
    assert "pycds: summary: SHARE: no archive in use" in cp.stderr, \
        cp.describe()
    # Not verbose: nothing.
    cp = run(venv, ["app.py"], cwd=tmp_path, mode="SHARE", archive=img,
             check=True)
    assert cp.stderr == "", cp.describe()


# ------------------------------------------------------------ status

def test_status_says_what_would_happen(venv, tmp_path):
    img = make_archive(venv, tmp_path)
    rc, off = status(venv, tmp_path, {})
    assert rc == 1 and off["mode"] is None, off
    assert off["hook"] and off["hook"].endswith("00-pycds.pth"), off
    assert "PYCDSMODE is not set" in off["verdict"]

    rc, good = status(venv, tmp_path, {"PYCDSMODE": "share",
                                       "PYCDSARCHIVE": str(img)})
    assert rc == 0 and good["serves"] and good["mode"] == "SHARE", good
    (layer,) = good["layers"]
    assert layer["usable"] and layer["entries"] >= 3, layer
    assert str(img) in good["verdict"]

    missing = tmp_path / "missing.img"
    rc, two = status(venv, tmp_path, {
        "PYCDSMODE": "SHARE", "PYCDSARCHIVE": "%s:%s" % (missing, img)})
    assert rc == 0 and [x["usable"] for x in two["layers"]] == [False, True]
    assert "missing" in two["layers"][0]["reason"], two

    # An archive others may write is refused, and status says so.
    shared = tmp_path / "shared.img"
    shutil.copy(img, shared)
    os.chmod(shared, 0o664)
    rc, refused = status(venv, tmp_path, {"PYCDSMODE": "SHARE",
                                          "PYCDSARCHIVE": str(shared)})
    assert rc == 1 and not refused["serves"], refused
    assert "writable" in refused["layers"][0]["reason"], refused
    assert "no layer is usable" in refused["verdict"]

    # The same from python -m pycds.
    rc, again = status(venv, tmp_path, {"PYCDSMODE": "SHARE",
                                        "PYCDSARCHIVE": str(img)},
                       module=True)
    assert rc == 0 and again["layers"] == good["layers"], again

    # The text form ends with the verdict.
    cp = run_tool(venv, ["status"], cwd=tmp_path,
                  env={"PYCDSMODE": "SHARE", "PYCDSARCHIVE": str(img)})
    assert cp.returncode == 0, cp.describe()
    assert cp.stdout.splitlines()[-1].startswith("verdict:  SHARE serves "
                                                 "from"), cp.describe()


def test_status_says_how_pages_are_kept(venv, tmp_path):
    """status opens each layer as SHARE would, lease included, and says how
    this user's processes would keep its image safe: a lease on their own
    file, no lease needed (PYCDSIMMUTABLE=1), or, on another user's file
    without CAP_LEASE, pages copied as used, with a warning that says
    what shares them."""
    img = make_archive(venv, tmp_path)
    env = {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": str(img)}
    _, own = status(venv, tmp_path, env)
    assert own["layers"][0]["pages"] == "leased", own
    _, said = status(venv, tmp_path, {**env, "PYCDSIMMUTABLE": "1"})
    assert said["layers"][0]["pages"] == "shared: PYCDSIMMUTABLE=1", said
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to read another user's file "
                    "without CAP_LEASE")
    other = tmp_path / "other.img"
    shutil.copy(img, other)
    os.chown(other, 65534, 65534)
    e = env_for(extra={**env, "PYCDSARCHIVE": str(other),
                       "PYCDSTRUST": "any"})
    cp = subprocess.run([setpriv, "--bounding-set=-lease", "--inh-caps=-lease",
                         venv.pycds_dump, "status", "--json"], env=e,
                        cwd=tmp_path, capture_output=True, text=True)
    report = json.loads(cp.stdout)
    assert report["serves"], report
    assert (report["layers"][0]["pages"]
            == "copied: no lease (the file is another user's)"), report
    (warning,) = [w for w in report["warnings"] if "PYCDSIMMUTABLE" in w]
    assert str(other) in warning, report


def test_status_runs_nothing(venv, tmp_path):
    """Under the mode it reports on, status does not trace, dump or write
    an archive itself."""
    img, lst = tmp_path / "new.img", tmp_path / "app.lst"
    rc, auto = status(venv, tmp_path, {"PYCDSMODE": "AUTO",
                                       "PYCDSARCHIVE": str(img)})
    assert rc == 1 and not auto["serves"], auto
    assert "AUTO writes %s at exit" % img in auto["verdict"], auto
    rc, trace = status(venv, tmp_path, {"PYCDSMODE": "TRACE",
                                        "PYCDSLIST": str(lst)}, module=True)
    assert rc == 0 and trace["ready"], trace
    rc, dump = status(venv, tmp_path, {"PYCDSMODE": "DUMP",
                                       "PYCDSLIST": str(lst),
                                       "PYCDSARCHIVE": str(img)})
    assert rc == 1 and "list %s is missing" % lst in dump["verdict"], dump
    assert not img.exists() and not lst.exists()


# ------------------------------------------------------------ AUTO warns

def test_auto_that_cannot_write_warns_once(venv, tmp_path):
    write(tmp_path / "app.py", APP)
    img = tmp_path / "no-such-dir" / "app.img"
    cp = run(venv, ["app.py"], cwd=tmp_path, mode="AUTO", archive=img,
             check=True)
    assert cp.stdout == "ok\n"
    warned = warnings_of(cp.stderr)
    assert len(warned) == 1 and str(img) in warned[0], cp.describe()
    assert "AUTO cannot write" in warned[0], cp.describe()
    rc, report = status(venv, tmp_path, {"PYCDSMODE": "AUTO",
                                         "PYCDSARCHIVE": str(img)})
    assert "AUTO cannot write %s: its directory" % img in report["verdict"]


# ------------------------------------------------------------ environment

def test_environment_values_read_alike(venv, tmp_path):
    img = make_archive(venv, tmp_path)
    probe = ("import json, pycds; "
             "print(json.dumps([s['prelinked'] for s in "
             "pycds.layer_stats()]))")
    for value in ("YES", "On", "true", "1"):
        cp = run(venv, ["app.py"], cwd=tmp_path, mode="Share", archive=img,
                 env={"PYCDSVERBOSE": value}, check=True)
        assert len(_SUMMARY.findall(cp.stderr)) == 1, cp.describe()
        assert not warnings_of(cp.stderr), cp.describe()
        cp = run(venv, ["-c", probe], cwd=tmp_path, mode="SHARE",
                 archive=img, env={"PYCDSCHECK": value}, check=True)
        assert not isinstance(json.loads(cp.stdout)[0], dict), cp.describe()
    for value in ("no", "OFF", "false", "0"):
        cp = run(venv, ["app.py"], cwd=tmp_path, mode="SHARE", archive=img,
                 env={"PYCDSVERBOSE": value}, check=True)
        assert cp.stderr == "", cp.describe()
    cp = run(venv, ["app.py"], cwd=tmp_path, mode="off", archive=img,
             check=True)
    assert cp.stderr == "", cp.describe()

    shared = tmp_path / "shared.img"
    shutil.copy(img, shared)
    os.chmod(shared, 0o664)
    for value in ("any", "YES"):
        cp = run(venv, ["-c", "import colorsys, pycds; "
                              "print(pycds.stats()['served'])"],
                 cwd=tmp_path, mode="SHARE", archive=shared,
                 env={"PYCDSTRUST": value}, check=True)
        assert int(cp.stdout) >= 1 and cp.stderr == "", cp.describe()

    for name, value, accepted in (
            ("PYCDSVERBOSE", "banana", "0, 1, 2 or yes/no"),
            ("PYCDSCHECK", "maybe", "1/yes/true/on or 0/no/false/off"),
            ("PYCDSTRUST", "everyone", "any"),
            ("PYCDSVALIDATION", "sometimes", "timestamp, checked-hash"),
            ("PYCDSAUTOTHRESHOLD", "lots", "a fraction from 0 to 1"),
            ("PYCDSMODE", "SHAER", "TRACE, DUMP, SHARE, AUTO, PRELINK")):
        env = {"PYCDSMODE": "AUTO", "PYCDSARCHIVE": str(img), name: value}
        cp = run(venv, ["app.py"], cwd=tmp_path, env=env, check=True)
        warned = warnings_of(cp.stderr)
        assert len(warned) == 1, cp.describe()
        assert "%s=%r" % (name, value) in warned[0], cp.describe()
        assert accepted in warned[0], cp.describe()
        rc, report = status(venv, tmp_path, env)
        assert report["warnings"] == [warned[0][len("pycds: warning: "):]]
    assert "PYCDSMODE is 'SHAER'" in report["verdict"], report


def test_share_common_case_imports_only_the_extension(venv, tmp_path):
    """SHARE with plain settings is activated by the extension: _pycds is
    imported and no module of the package pycds (each costs a process
    ~0.4 ms at start).  Any other setting goes to pycds._boot, which still
    warns once about a value that means nothing, under SHARE too; an
    archive that cannot be opened is said once, although site reads a
    venv's .pth twice where lib64 links to lib."""
    img = make_archive(venv, tmp_path)
    probe = ("import colorsys, sys\n"
             "print(sorted(m for m in sys.modules if 'pycds' in m))\n"
             "import pycds\n"
             "print(pycds.stats()['served'],\n"
             "      pycds.layer_stats()[-1]['path'])\n")
    write(tmp_path / "probe.py", probe)

    def served(env, archive=img):
        cp = run(venv, ["probe.py"], cwd=tmp_path, mode="SHARE",
                 archive=archive, env=env, check=True)
        modules, counts = cp.stdout.splitlines()
        n, path = counts.split(" ", 1)
        assert int(n) >= 1 and path == str(img), cp.describe()
        return eval(modules), cp

    for env in ({}, {"PYCDSIMMUTABLE": "1"}, {"PYCDSTRUST": " Any"},
                {"PYCDSVALIDATION": "checked-hash"}, {"PYCDSVERBOSE": "0"},
                {"PYCDSCHECK": "off"}, {"PYCDSMODE": " share "}):
        modules, cp = served(env)
        assert modules == ["_pycds"], cp.describe()
        assert cp.stderr == "", cp.describe()
    for env in ({"PYCDSVERBOSE": "1"}, {"PYCDSCHECK": "1"},
                {"PYCDSIMMUTABLE": "sometimes"}):
        modules, cp = served(env)
        assert "pycds._boot" in modules, cp.describe()
    assert warnings_of(cp.stderr) == [
        "pycds: warning: PYCDSIMMUTABLE='sometimes': accepted values are "
        "1/yes/true/on or 0/no/false/off; taken as no"], cp.describe()

    missing = tmp_path / "missing.img"
    modules, cp = served({}, archive="%s:%s" % (missing, img))
    assert modules == ["_pycds"], cp.describe()
    assert warnings_of(cp.stderr) == [
        "pycds: warning: %s: cannot open: No such file or directory; "
        "importing normally" % missing], cp.describe()


LIBRARIES_PROBE = r"""
import colorsys, json, sys

def libraries():
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    return sorted(p.rsplit("/", 1)[1].split(".so")[0] for p in paths
                  if p.rsplit("/", 1)[1].startswith(("libelf", "libz.")))

before = libraries()
import pycds
served = pycds.stats()["served"]
pycds.dump_code(sys.argv[1], {"m": compile("x = 1", "m.py", "exec")})
ns = {}
exec(pycds.load_code(sys.argv[1])["m"], ns)
print(json.dumps([before, served, libraries(), ns["x"]]))
"""


def test_share_loads_libelf_only_to_write(venv, tmp_path):
    """A SHARE process reads the archive's section table itself: libelf,
    and the zlib it links, are loaded when the process first writes an
    archive, not at every start (docs/FORMAT.md, "Container").  The
    interpreter may load zlib of its own (Debian's links it): the
    libraries at start are those of a process without pycds."""
    img = make_archive(venv, tmp_path)
    write(tmp_path / "probe.py", LIBRARIES_PROBE)

    def probe(mode):
        cp = run(venv, ["probe.py", str(tmp_path / "written.img")],
                 cwd=tmp_path, mode=mode, archive=img, check=True)
        return json.loads(cp.stdout), cp

    (off_start, _, _, _), _ = probe(None)
    (start, served, after, x), cp = probe("SHARE")
    assert start == off_start and served >= 1, cp.describe()
    assert not any(lib.startswith("libelf") for lib in start), cp.describe()
    assert any(lib.startswith("libelf") for lib in after), cp.describe()
    assert x == 1, cp.describe()


# The .pth line installs wrote while the extension was pycds._pycds.
EARLIER_PTH = ("import os; os.environ.get('PYCDSMODE') and getattr("
               "__import__('_thread'), '_is_main_interpreter', lambda: "
               "True)() and __import__('pycds')._activate()\n")


def test_pth_of_an_earlier_install(venv, tmp_path):
    """The .pth of an install from before the extension stood beside the
    package, read from another site directory (a venv reads its base
    interpreter's and the user's site-packages), still activates the
    pycds found: the same archive serves, once, and nothing is said."""
    img = make_archive(venv, tmp_path)
    user = tmp_path / "userbase"
    site = (user / "lib" / ("python%s" % venv.interp.version.rsplit(".", 1)[0])
            / "site-packages")
    site.mkdir(parents=True)
    (site / "00-pycds.pth").write_text(EARLIER_PTH)
    probe = ("import colorsys, site, sys, pycds\n"
             "print(site.ENABLE_USER_SITE, pycds.stats()['served'],\n"
             "      len(sys.meta_path))\n")
    # The suite turns the user's site-packages off; this test's is its own.
    user_site = {"PYTHONNOUSERSITE": "", "PYTHONUSERBASE": str(user)}
    runs = []
    for env in (user_site, dict(user_site, PYTHONUSERBASE=str(tmp_path))):
        cp = run(venv, ["-c", probe], cwd=tmp_path, mode="SHARE",
                 archive=img, env=env, check=True)
        assert cp.stderr == "", cp.describe()
        enabled, served, finders = cp.stdout.split()
        assert enabled == "True" and int(served) >= 1, cp.describe()
        runs.append((served, finders))
    # As without the earlier .pth: as many served, one finder.
    assert runs[0] == runs[1], runs


def test_another_pycds_in_the_current_directory(venv, tmp_path):
    """Under SHARE the .pth imports the installed _pycds; a program that
    then finds another built pycds first (the current directory's) is
    told so in one line, not handed a package and an extension of two
    installations.  With pycds off, that pycds imports with its own."""
    img = make_archive(venv, tmp_path)
    tree = tmp_path / "tree"
    shutil.copytree(Path(venv.interp.builddir) / "pycds", tree / "pycds")
    for extension in Path(venv.interp.builddir).glob("_pycds.*"):
        shutil.copy(extension, tree)
    probe = "import pycds, _pycds; print(_pycds.__file__)"
    cp = run(venv, ["-c", probe], cwd=tree, check=True)
    assert Path(cp.stdout.strip()).parent == tree, cp.describe()
    cp = run(venv, ["-c", probe], cwd=tree, mode="SHARE", archive=img)
    installed = json.loads(run(venv, ["-c", "import json, sysconfig; print("
                                       "json.dumps(sysconfig.get_paths()"
                                       "['platlib']))"], cwd=tmp_path,
                               check=True).stdout)
    assert cp.returncode == 1, cp.describe()
    assert cp.stderr.splitlines()[-1] == (
        "ImportError: pycds in %s cannot use the _pycds imported from %s, "
        "another installation's: put this one first on sys.path "
        "(PYTHONPATH=%s), or import that one"
        % (tree / "pycds", installed, tree)), cp.describe()


API_ON_FIRST_USE = r"""
import json, sys
import pycds
before = "pycds._api" in sys.modules
names = {}
exec("from pycds import *", names)
print(json.dumps([before, "pycds._api" in sys.modules,
                  sorted(n for n in names if not n.startswith("_")),
                  sorted(pycds.__all__),
                  sorted(set(pycds.__all__) - set(dir(pycds))),
                  callable(pycds.served_code)]))
try:
    pycds.no_such_function
except AttributeError as e:
    print(e)
"""


def test_package_api_on_first_use(venv, tmp_path):
    """The package holds what activation needs (the .pth imports it for
    any activation but SHARE's common case); its functions come from
    pycds._api on first use, whole: ``from pycds import *`` gives every
    name of ``__all__``, ``dir()`` lists them, and a name that is none of
    them is an AttributeError."""
    cp = run(venv, ["-c", API_ON_FIRST_USE], cwd=tmp_path, check=True)
    first, last = cp.stdout.splitlines()
    before, after, star, all_, undir, served_code = json.loads(first)
    assert not before and after, cp.describe()
    assert star == all_ and {"trace", "dump", "share", "prelink",
                             "ArchiveError"} <= set(star), cp.describe()
    assert undir == [] and served_code, cp.describe()
    assert last == "module 'pycds' has no attribute 'no_such_function'"

# ------------------------------------------------------------ two builds

def _two_versions():
    seen = {}
    for interp in INTERPRETERS:
        seen.setdefault(interp.version.rsplit(".", 1)[0], interp)
    return list(seen.values())[:2]


needs_two = pytest.mark.skipif(len(_two_versions()) < 2,
                               reason="needs two Python versions")


@needs_two
def test_abi_mismatch_names_both_versions(tmp_path):
    a, b = (make_venv(i) for i in _two_versions())
    img = make_archive(a, tmp_path)
    cp = run(b, ["app.py"], cwd=tmp_path, mode="SHARE", archive=img,
             check=True)
    (warned,) = warnings_of(cp.stderr)
    assert "made by Python %s" % a.interp.version in warned, cp.describe()
    assert "this is Python %s" % b.interp.version in warned, cp.describe()
    info = run_tool(b, ["info", "--json", img], cwd=tmp_path)
    reason = json.loads(info.stdout)["reason"]
    assert a.interp.version in reason and b.interp.version in reason


@needs_two
def test_two_interpreters_one_auto_setting(tmp_path):
    """PYCDSARCHIVE=app-{abi}.img: each interpreter build keeps its own
    archive, so two of them alternating are both served after their first
    runs instead of rewriting one file at every run."""
    write(tmp_path / "app.py", APP)
    setting = str(tmp_path / "app-{abi}.img")
    venvs = [make_venv(i) for i in _two_versions()]
    runs = []
    for venv in venvs * 3:
        cp = run(venv, ["app.py"], cwd=tmp_path, mode="AUTO",
                 archive=setting, verbose=2, check=True)
        runs.append(cp)
    wrote = ["pycds: auto: wrote" in cp.stderr for cp in runs]
    assert wrote == [True, True, False, False, False, False], \
        "\n\n".join(cp.describe() for cp in runs)
    for cp in runs[2:]:
        served = re.findall(r"^pycds: served (\S+)", cp.stderr, re.M)
        assert {"json", "colorsys", "fractions"} <= set(served), \
            cp.describe()
    images = sorted(p.name for p in tmp_path.glob("app-*.img"))
    assert len(images) == 2 and "app-{abi}.img" not in images, images
    tags = [run(v, ["-c", "import pycds; print(pycds.abi_tag())"],
                cwd=tmp_path, check=True).stdout.strip() for v in venvs]
    assert images == sorted("app-%s.img" % t for t in tags), (images, tags)
    # The other commands read the setting the same way.
    cp = run_tool(venvs[0], ["info", "--json"], cwd=tmp_path,
                  env={"PYCDSARCHIVE": setting})
    assert json.loads(cp.stdout)["usable"], cp.describe()
