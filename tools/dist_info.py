"""Package metadata for `make install`, and `make uninstall` from it.

    python dist_info.py write  ROOT PLATLIB SCRIPT...
    python dist_info.py remove PLATLIB SCRIPT

``write`` puts pycds-VERSION.dist-info (METADATA from pyproject.toml,
INSTALLER, RECORD) into PLATLIB, so that `pip show pycds`,
`importlib.metadata.version("pycds")` and `pip uninstall pycds` know the
installation: RECORD lists every file `make install` put there (the
package, its __pycache__, the extension _pycds beside it, 00-pycds.pth,
the SCRIPTs) in the format of the wheel specification.  ``remove``
deletes exactly the files RECORD lists, then the directories that left
empty; an installation from before RECORD existed is removed as `make
uninstall` did then.

Run by the target interpreter (3.11+: tomllib).
"""
import base64
import csv
import glob
import hashlib
import os
import re
import shutil
import sys
import tomllib

NAME = "pycds"
SCRIPT_MARK = "from pycds.cli import main"


def _version(root):
    text = open(os.path.join(root, "pycds", "__init__.py")).read()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _metadata(root, version):
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    lines = ["Metadata-Version: 2.1", "Name: %s" % project["name"],
             "Version: %s" % version,
             "Summary: %s" % project["description"],
             "Requires-Python: %s" % project["requires-python"]]
    lines += ["Classifier: %s" % c for c in project.get("classifiers", ())]
    return "\n".join(lines) + "\n"


def _record_row(path, platlib):
    with open(path, "rb") as f:
        data = f.read()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
    return (os.path.relpath(path, platlib),
            "sha256=" + digest.rstrip(b"=").decode(), str(len(data)))


def _extensions(platlib):
    """The package's extension, _pycds, beside it in platlib."""
    return sorted(glob.glob(os.path.join(platlib, "_pycds.*")))


def write(root, platlib, scripts):
    version = _version(root)
    for old in glob.glob(os.path.join(platlib, NAME + "-*.dist-info")):
        shutil.rmtree(old)
    info = os.path.join(platlib, "%s-%s.dist-info" % (NAME, version))
    os.mkdir(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(_metadata(root, version))
    with open(os.path.join(info, "INSTALLER"), "w") as f:
        f.write("make\n")
    files = [os.path.join(info, "METADATA"), os.path.join(info, "INSTALLER"),
             os.path.join(platlib, "00-pycds.pth")] + list(scripts)
    files += _extensions(platlib)
    for directory, _, names in os.walk(os.path.join(platlib, NAME)):
        files += [os.path.join(directory, n) for n in sorted(names)]
    record = os.path.join(info, "RECORD")
    with open(record + ".tmp", "w", newline="") as f:
        out = csv.writer(f)
        out.writerows(_record_row(p, platlib) for p in files)
        out.writerow((os.path.relpath(record, platlib), "", ""))
    os.replace(record + ".tmp", record)


def _remove_unrecorded(platlib, script):
    """An installation from before `make install` wrote RECORD."""
    shutil.rmtree(os.path.join(platlib, NAME), ignore_errors=True)
    # An install stopped before it wrote RECORD: its extension too.
    for extension in _extensions(platlib):
        os.remove(extension)
    pth = os.path.join(platlib, "00-pycds.pth")
    if os.path.exists(pth):
        os.remove(pth)
    if os.path.exists(script):
        with open(script, errors="replace") as f:
            ours = SCRIPT_MARK in f.read()
        if ours:
            os.remove(script)
        else:
            print("left %s alone: not ours" % script, file=sys.stderr)


def remove(platlib, script):
    records = glob.glob(os.path.join(platlib, NAME + "-*.dist-info",
                                     "RECORD"))
    if not records:
        _remove_unrecorded(platlib, script)
        return
    for record in records:
        with open(record, newline="") as f:
            paths = [os.path.normpath(os.path.join(platlib, row[0]))
                     for row in csv.reader(f) if row]
        ours = (os.path.join(platlib, NAME), os.path.dirname(record))
        directories = set()
        for path in paths:
            if os.path.lexists(path):
                os.remove(path)
                print("removed %s" % path)
            directory = os.path.dirname(path)
            # The package's and the metadata's directories, never
            # site-packages or bin.
            if directory.startswith(ours):
                directories.add(directory)
        # Deepest first: a package's __pycache__ before the package.
        for directory in sorted(directories, key=len, reverse=True):
            if os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)


def main(argv):
    if len(argv) >= 4 and argv[1] == "write":
        write(argv[2], argv[3], argv[4:])
    elif len(argv) == 4 and argv[1] == "remove":
        remove(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
