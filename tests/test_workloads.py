"""Real workloads through TRACE -> DUMP -> SHARE: the output of a SHARE
run equals the baseline's, the workload's modules are served from the
archive, nothing is stale or refused.

Stdlib workloads (tests/fixtures/workloads/wl_*.py) run on every target
interpreter; real packages (pkg_*.py: boto3, flask, jsonschema) too, at the
versions bench/requirements.txt pins (`make test` installs them per
interpreter with `make workloads`); skipped, with the reason, where they
are not importable (no PyPI and no pip cache when they were installed).
"""

import pytest

from pipeline_fixtures import (FIXTURES, Pipeline, assert_same_run, copy_tree,
                               read_list, run, venv)

WORKLOADS = FIXTURES / "workloads"

# workload -> modules that must be served (besides every traced module
# the run imports again)
STDLIB = {
    "wl_asyncio": ["asyncio", "asyncio.base_events", "asyncio.streams",
                   "asyncio.tasks", "selectors", "concurrent.futures"],
    "wl_email": ["email", "email.message", "email.policy", "email.parser",
                 "email.headerregistry", "email.contentmanager", "base64"],
    "wl_http": ["http.client", "http.server", "socketserver", "threading",
                "urllib.parse", "json.decoder"],
    "wl_json": ["json", "json.decoder", "json.encoder", "json.scanner",
                "decimal"],
    "wl_xml": ["xml.etree.ElementTree", "xml.dom.minidom", "xml.dom"],
    "wl_argparse": ["argparse", "gettext"],
    "wl_logging": ["logging", "logging.config", "logging.handlers"],
    "wl_unittest": ["unittest", "unittest.case", "unittest.runner",
                    "unittest.loader", "difflib"],
}

PACKAGES = {
    "pkg_boto3": ("boto3", ["boto3", "boto3.session", "botocore.client",
                            "botocore.session", "botocore.loaders"]),
    "pkg_flask": ("flask", ["flask", "flask.app", "werkzeug", "jinja2",
                            "werkzeug.routing", "markupsafe"]),
    "pkg_jsonschema": ("jsonschema", ["jsonschema", "jsonschema.validators",
                                      "referencing", "attr"]),
}


def _check(venv, tmp_path, script, must_serve, min_served=0):
    work = copy_tree(WORKLOADS, tmp_path / "w")
    p = Pipeline(venv, [f"{script}.py"], work, tmp_path).build()
    listed = read_list(p.lst)
    for name in must_serve:
        assert name in listed, f"{name} not traced"
    base = p.baseline(check=True)
    share = p.share()
    assert_same_run(base, share, f"{script}: ")
    v = share.verbose
    missing = [m for m in must_serve if m not in v.served_set]
    assert not missing, f"not served: {missing}\n" + share.describe()
    assert v.stale == {} and v.refused == {} and v.warnings == [], \
        share.describe()
    # Every module the trace listed and the run imported was served.
    not_served = sorted(set(listed) & set(v.missed))
    assert not not_served, not_served
    assert len(v.served_set) >= min_served, (len(v.served_set),
                                            share.describe())
    return share


@pytest.mark.parametrize("script", sorted(STDLIB))
def test_stdlib_workload(venv, tmp_path, script):
    _check(venv, tmp_path, script, STDLIB[script], min_served=20)


@pytest.mark.parametrize("script", sorted(PACKAGES))
def test_package_workload(venv, tmp_path, script):
    package, must = PACKAGES[script]
    cp = run(venv, ["-c", f"import {package}"], cwd=tmp_path)
    if cp.returncode != 0:
        pytest.skip(f"{package} is not importable by {venv.id}")
    _check(venv, tmp_path, script, must, min_served=50)
