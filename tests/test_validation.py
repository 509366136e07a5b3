"""Source validation at SHARE (like PEP 552's pyc modes).

timestamp     (default) one stat: an edit that changes mtime or size makes
              the module stale -> normal import, the edit takes effect
checked-hash  xxh3 of the source: every content change is seen, even one
              that keeps size and mtime; a touch alone is not a change
unchecked     the archive is trusted (immutable images): the archived code
              is served even after the source was edited
PYCDSVALIDATION at DUMP records the mode in the archive; at SHARE it
overrides it.  `pycds-dump create --validation` records it the same way.
"""

import os

import pytest

from pipeline_fixtures import Pipeline, run_tool, venv, write


def _tree(root):
    write(root / "pkg" / "__init__.py", "INIT = 'init-old'\n")
    write(root / "pkg" / "mod.py", """
        VALUE = 'old'
        def value():
            return VALUE
    """)
    write(root / "plain.py", "PLAIN = 'plain'\n")
    write(root / "main.py", """
        import pkg, pkg.mod, plain
        print(pkg.INIT, pkg.mod.value(), plain.PLAIN)
    """)


@pytest.fixture
def app(venv, tmp_path):
    _tree(tmp_path / "app")
    p = Pipeline(venv, ["main.py"], tmp_path / "app", tmp_path)
    p.trace()
    return p


OLD = "init-old old plain\n"


def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def _same_length_edit(path, old, new):
    """Replace ``old`` by ``new`` (same length), keeping mtime_ns and size."""
    assert len(old) == len(new)
    st = os.stat(path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(path)
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _served_and_stale(cp):
    return cp.verbose.served_set, cp.verbose.stale


@pytest.mark.parametrize("mode", ["timestamp", None, "checked-hash"])
def test_edit_takes_effect(app, mode):
    app.dump(validation=mode)
    cp = app.share(check=True)
    assert cp.stdout == OLD and {"pkg", "pkg.mod", "plain"} <= cp.verbose.served_set
    _append(app.cwd / "pkg" / "mod.py", "VALUE = 'appended'")
    _append(app.cwd / "pkg" / "__init__.py", "INIT = 'init-new'")
    cp = app.share(check=True)
    assert cp.stdout == "init-new appended plain\n", cp.describe()
    served, stale = _served_and_stale(cp)
    assert "pkg.mod" in stale and "pkg" in stale, cp.describe()
    assert "pkg.mod" not in served and "pkg" not in served
    assert "plain" in served
    assert cp.verbose.refused == {}
    assert cp.stdout == app.baseline().stdout


def test_checked_hash_sees_same_size_same_mtime_edit(app):
    app.dump(validation="checked-hash")
    _same_length_edit(app.cwd / "pkg" / "mod.py", "'old'", "'OLD'")
    cp = app.share(check=True)
    assert cp.stdout == "init-old OLD plain\n", cp.describe()
    assert "pkg.mod" in cp.verbose.stale, cp.describe()
    assert "hash" in cp.verbose.stale["pkg.mod"]
    assert {"pkg", "plain"} <= cp.verbose.served_set


def test_checked_hash_ignores_touch(app):
    app.dump(validation="checked-hash")
    path = app.cwd / "pkg" / "mod.py"
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    cp = app.share(check=True)
    assert cp.stdout == OLD
    assert "pkg.mod" in cp.verbose.served_set and cp.verbose.stale == {}
    # Under timestamp (override) the same touch is a change, as for .pyc.
    cp = app.share(check=True, validation="timestamp")
    assert cp.stdout == OLD
    assert "pkg.mod" in cp.verbose.stale, cp.describe()


def test_unchecked_serves_archived_code(app):
    app.dump(validation="unchecked")
    _append(app.cwd / "pkg" / "mod.py", "VALUE = 'appended'")
    cp = app.share(check=True)
    assert cp.stdout == OLD, cp.describe()
    assert {"pkg", "pkg.mod", "plain"} <= cp.verbose.served_set
    assert cp.verbose.stale == {} and cp.verbose.refused == {}
    # get_source still reads the file: the edited text.
    cp = app.share(["-c", "import pkg.mod, inspect; "
                    "print(inspect.getsource(pkg.mod).splitlines()[-1])"],
                   check=True)
    assert cp.stdout == "VALUE = 'appended'\n"


@pytest.mark.parametrize("dumped,override,expected", [
    ("timestamp", "unchecked", OLD),
    ("unchecked", "timestamp", "init-old appended plain\n"),
    ("unchecked", "checked-hash", "init-old appended plain\n"),
    ("checked-hash", "unchecked", OLD),
])
def test_share_override(app, dumped, override, expected):
    app.dump(validation=dumped)
    _append(app.cwd / "pkg" / "mod.py", "VALUE = 'appended'")
    cp = app.share(check=True, validation=override)
    assert cp.stdout == expected, cp.describe()
    assert ("pkg.mod" in cp.verbose.stale) == (expected != OLD)


def test_override_checked_hash_over_timestamp(app):
    app.dump(validation="timestamp")
    _same_length_edit(app.cwd / "pkg" / "mod.py", "'old'", "'new'")
    cp = app.share(check=True, validation="checked-hash")
    assert cp.stdout == "init-old new plain\n", cp.describe()
    assert "pkg.mod" in cp.verbose.stale


def test_unknown_override_warns_and_uses_archive_mode(app):
    app.dump(validation="unchecked")
    _append(app.cwd / "pkg" / "mod.py", "VALUE = 'appended'")
    cp = app.share(check=True, validation="sometimes", verbose=0)
    assert cp.stdout == OLD, cp.describe()
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pycds: warning:"), \
        cp.describe()


@pytest.mark.parametrize("mode", ["unchecked", "checked-hash"])
def test_pycds_dump_create_validation(app, mode):
    cp = run_tool(app.venv, ["create", "-l", app.lst, "-o", app.img,
                             "--validation", mode], cwd=app.cwd)
    assert cp.returncode == 0, cp.describe()
    if mode == "unchecked":
        _append(app.cwd / "pkg" / "mod.py", "VALUE = 'appended'")
        expected = OLD
    else:
        _same_length_edit(app.cwd / "pkg" / "mod.py", "'old'", "'OLD'")
        expected = "init-old OLD plain\n"
    cp = app.share(check=True)
    assert cp.stdout == expected, cp.describe()
