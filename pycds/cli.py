"""pycds-dump: create, prelink, inspect, check pycds archives, and say
what SHARE would do here (status), from the command line.

Run as ``pycds-dump`` (installed console script), ``python -m pycds`` or
``tools/pycds-dump`` from the source tree.

Adding a subcommand is one function decorated with :func:`command`::

    @command("name", "one-line help", arg("archive"), arg("--flag", ...))
    def cmd_name(args):
        ...
        return 0            # the exit status
"""

import argparse
import json
import sys

import _pycds
import pycds
from pycds._left_out import LeftOut

PROG = "pycds-dump"

# Exit statuses of every subcommand.
EXIT_OK = 0
EXIT_PROBLEM = 1      # error, unreadable/corrupt archive, checksum mismatch
# 2 for both, as argparse says "you cannot use this as given": a command
# line it rejects, or (verify) a sound archive this interpreter cannot use
# (another's, or untrusted); the message on stderr tells them apart.
EXIT_UNUSABLE = 2
EXIT_USAGE = 2

_COMMANDS = []


def arg(*names, **kwargs):
    """An argument of a subcommand, as for ArgumentParser.add_argument."""
    return names, kwargs


def command(name, help, *arguments, epilog=None, description=None):
    """Register the decorated ``function(args) -> int`` as a subcommand."""
    def register(function):
        _COMMANDS.append((name, help, arguments, epilog, description, function))
        return function
    return register


class CommandError(Exception):
    """An error reported as ``pycds-dump: error: <message>``, exit 1; with
    --json, as {"error": message, **fields} on stdout."""

    def __init__(self, message, **fields):
        super().__init__(message)
        self.fields = fields


class UsageError(CommandError):
    """A wrong combination of arguments: reported like argparse's, exit 2."""


# ------------------------------------------------------------ formatting

_RELEASE_LEVELS = {0xA: "a", 0xB: "b", 0xC: "rc", 0xF: ""}


def format_hexversion(hexversion):
    """0x030b07f0 -> '3.11.7', 0x030c00a1 -> '3.12.0a1'."""
    major = (hexversion >> 24) & 0xFF
    minor = (hexversion >> 16) & 0xFF
    micro = (hexversion >> 8) & 0xFF
    level = (hexversion >> 4) & 0xF
    serial = hexversion & 0xF
    text = "%d.%d.%d" % (major, minor, micro)
    if level != 0xF:
        text += "%s%d" % (_RELEASE_LEVELS.get(level, "?%x" % level), serial)
    return text


def _as_bytes(value, width=None):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int):
        return value.to_bytes(width or 4, "little")
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            return value.encode()
    return b""


def format_magic(value):
    """pyc magic as CPython's magic number and its bytes: '3495 (a70d0d0a)'."""
    raw = _as_bytes(value, 4)
    if len(raw) >= 2:
        return "%d (%s)" % (int.from_bytes(raw[:2], "little"), raw.hex())
    return repr(value)


def format_build_id(value):
    raw = _as_bytes(value)
    return raw.hex() if raw else "(none)"


def format_bytes(n):
    if n is None:
        return "?"
    if n < 1024:
        return "%d B" % n
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024.0
        if n < 1024 or unit == "GiB":
            return "%.1f %s" % (n, unit)


def _json_default(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError("cannot encode %r as JSON" % type(value).__name__)


def _table(rows, aligns):
    """Rows of strings as aligned columns; aligns: '<' or '>' per column."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(aligns))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) if align == "<" else cell.rjust(width)
                 for cell, align, width in zip(row, aligns, widths)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _open_error(path, exc):
    return CommandError("%s: %s" % (path, exc) if path not in str(exc) else str(exc))


def _inspect(path, trust_any):
    try:
        return pycds.inspect_archive(path, trust_any)
    except (pycds.ArchiveError, OSError) as exc:
        raise _open_error(path, exc)


def _trust_any(args):
    """--trust-any, or PYCDSTRUST=any as SHARE reads it: judge an archive
    as SHARE would in this environment."""
    import os
    return args.trust_any or os.environ.get("PYCDSTRUST") == "any"


_TRUST_ANY = arg(
    "--trust-any", action="store_true",
    help="count an archive owned by another user or writable by group or "
         "others as usable, as PYCDSTRUST=any makes SHARE use it (default: "
         "unusable, \"not trusted\", unless PYCDSTRUST=any is set)")


def _write_error(path, exc):
    """A CommandError for an archive that could not be written: the file,
    why, and the errno's name (a full disk: ENOSPC)."""
    import errno
    code = errno.errorcode.get(exc.errno) if isinstance(exc, OSError) \
        else None
    if code is None:
        return CommandError(str(exc), archive=path, errno=None)
    return CommandError("cannot write %s: %s (%s)"
                        % (path, exc.strerror, code), archive=path,
                        errno=code)


# ------------------------------------------------------------ subcommands

@command(
    "info", "describe an archive (or each layer of several): ABI key, "
            "sizes, object types, entries",
    arg("archive", nargs="*",
        help="the archive file; several (or paths joined by ':') are "
             "layers, described in order; none: the layers of $PYCDSARCHIVE"),
    arg("--json", action="store_true",
        help="print pycds.inspect_archive()'s dict as JSON (several layers: "
             "{\"layers\": [dict, ...]}, each with \"layer\" and "
             "\"hidden\", the entries an earlier layer also holds)"),
    arg("--entries", type=int, default=20, metavar="N",
        help="list at most N entries (default 20, 0 = all)"),
    _TRUST_ANY,
    epilog="exit status: 0 = described; 1 = a file is missing or not a "
           "pycds archive (with several layers the others are still "
           "described); 2 = usage error.",
)
def cmd_info(args):
    import os
    paths = []
    for a in args.archive:
        paths += pycds.layers(a)
    if not args.archive:
        paths = pycds.layers(os.environ.get("PYCDSARCHIVE", ""))
        if not paths:
            raise UsageError("no archive given and PYCDSARCHIVE is not set")
    if len(paths) == 1:
        info = _inspect(paths[0], _trust_any(args))
        if args.json:
            json.dump(info, sys.stdout, indent=2, sort_keys=True,
                      default=_json_default)
            sys.stdout.write("\n")
        else:
            print("\n".join(_describe(info, paths[0], args.entries)))
        return EXIT_OK

    layers, status, earlier = [], EXIT_OK, set()
    for n, path in enumerate(paths, 1):
        try:
            info = _inspect(path, _trust_any(args))
        except CommandError as exc:
            status = EXIT_PROBLEM
            layers.append({"layer": n, "path": path, "error": str(exc)})
            continue
        names = {e["name"] for e in info.get("entries") or []}
        info["layer"] = n
        info["hidden"] = sorted(names & earlier)
        earlier |= names
        layers.append(info)
    if args.json:
        json.dump({"layers": layers}, sys.stdout, indent=2, sort_keys=True,
                  default=_json_default)
        sys.stdout.write("\n")
        return status
    out = ["%d layers; a module is served by the first layer holding a "
           "valid entry for it" % len(paths)]
    for info in layers:
        out.append("")
        out.append("== layer %d: %s" % (info["layer"], info["path"]))
        if "error" in info:
            out.append("error: %s" % info["error"])
            continue
        if info["hidden"]:
            out.append("hidden:         %d entries also in an earlier layer "
                       "(served from here only when that one is stale or "
                       "refused)" % len(info["hidden"]))
        out.extend(_describe(info, info["path"], args.entries))
    print("\n".join(out))
    return status


def _describe(info, path, max_entries):
    """info's text lines (one archive)."""
    out = []
    key = info.get("key") or {}
    entries = info.get("entries") or []
    out.append("archive:        %s (%s)" % (info.get("path", path),
                                             format_bytes(info.get("file_bytes"))))
    out.append("format version: %s" % info.get("format_version"))
    data = info.get("contents") == "data"
    if data:
        out.append("contents:       data (pycds.load_data reads it; "
                   "FrozenDicts count as tuples below)")
    else:
        out.append("validation:     %s" % info.get("validation"))
    out.append("ABI key:")
    if "hexversion" in key:
        out.append("  python:       %s (hexversion 0x%08x)"
                   % (format_hexversion(key["hexversion"]), key["hexversion"]))
    out.append("  pyc magic:    %s" % format_magic(key.get("pyc_magic")))
    out.append("  optimize:     %s" % key.get("optimize"))
    out.append("  pointer size: %s" % key.get("pointer_size"))
    out.append("  build-id:     %s" % format_build_id(key.get("build_id")))
    if info.get("usable"):
        out.append("usable:         yes, by this interpreter")
    else:
        out.append("usable:         no: %s" % (info.get("reason") or "unknown reason"))
    out.append("entries:        %d" % len(entries))
    out.append("heap:           %s bytes (%s)" % (info.get("heap_bytes"),
                                                  format_bytes(info.get("heap_bytes"))))
    out.append("relocations:    %s" % info.get("relocations"))
    out.append("symbols:        %s" % info.get("symbols"))
    image = info.get("prelinked_bytes")
    user = "load_data" if data else "SHARE"
    out.append("prelinked:      %s" % (
        "%s bytes (%s), used in place by %s" % (image, format_bytes(image),
                                                user)
        if image else "none: %s relocates every entry" % user))

    by_type = info.get("bytes_by_type") or {}
    if by_type:
        total = sum(by_type.values()) or 1
        out.append("")
        out.append("heap bytes by object type:")
        rows = [("type", "bytes", "share")]
        for name, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])):
            rows.append((name, str(n), "%.1f%%" % (100.0 * n / total)))
        out.extend(_table(rows, "<>>"))

    if entries:
        shown = entries if max_entries <= 0 else entries[:max_entries]
        out.append("")
        out.append("entries%s:" % ("" if len(shown) == len(entries)
                                   else " (first %d of %d; --entries 0 lists all)"
                                   % (len(shown), len(entries))))
        rows = [("name", "heap bytes", "pkg", "origin")]
        for entry in shown:
            rows.append((str(entry.get("name")), str(entry.get("heap_bytes")),
                         "yes" if entry.get("package") else "",
                         str(entry.get("origin") or "")))
        out.extend(_table(rows, "<><<"))
    return out


@command(
    "verify", "check an archive's checksums and whether this interpreter can use it",
    arg("archive", help="the archive file"),
    arg("--json", action="store_true",
        help="print {\"archive\", \"problems\": [...], \"usable\", "
             "\"reason\"} as JSON (same exit status)"),
    _TRUST_ANY,
    epilog="exit status: 0 = every checksum matches and this interpreter can "
           "use the archive; 1 = error, unreadable file or a checksum/format "
           "problem; 2 = well formed, but SHARE would not use it: made for "
           "another interpreter (its ABI key differs; `info` says how), or "
           "not trusted (owned by another user, or writable by group or "
           "others; see --trust-any). A command-line usage error also "
           "exits 2, as with every argparse program.",
)
def cmd_verify(args):
    args.archive = pycds.expand_abi(args.archive)
    try:
        problems = pycds.verify_archive(args.archive)
    except (pycds.ArchiveError, OSError) as exc:
        raise _open_error(args.archive, exc)
    try:
        info = pycds.inspect_archive(args.archive, _trust_any(args))
    except (pycds.ArchiveError, OSError) as exc:
        info = None
        if not problems:
            problems = [str(exc)]

    if args.json:
        json.dump({"archive": args.archive, "problems": problems,
                   "usable": bool(info and info.get("usable")),
                   "reason": None if info is None else info.get("reason")},
                  sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif problems:
        for problem in problems:
            print("problem: %s" % problem)
    else:
        print("ok: checksums match")
    if info is not None and not args.json:
        if info.get("usable"):
            print("usable: yes, by this interpreter")
        else:
            print("usable: no: %s" % (info.get("reason") or "unknown reason"))
    if problems:
        return EXIT_PROBLEM
    if info is None or not info.get("usable"):
        return EXIT_UNUSABLE
    return EXIT_OK


@command(
    "prelink", "write an archive's prelinked image again (the part SHARE "
               "uses in place)",
    arg("archive"),
    arg("-o", "--output", help="write the archive with its new image "
        "there (default: replace ARCHIVE, atomically); a file there is "
        "replaced only if it is a pycds archive (or empty), unless --force"),
    arg("--force", action="store_true",
        help="replace whatever file is at OUTPUT"),
    arg("-l", "--list", dest="list_path", help="the TRACE list the "
        "archive was made from: the modules every traced run loaded are "
        "every process's, their strings interned as the image is mapped, "
        "and the code that ran is kept apart, as `create -l` lays them "
        "out (default: the modules the interpreter imports as it starts)"),
    description="Write an archive again with a new prelinked image: its "
                "objects laid out at a preferred address with their final "
                "pointers, which SHARE maps and uses in place.  `create` "
                "and AUTO write one with every archive.  With "
                "PYTHONHASHSEED set, the image holds the hashes of its "
                "strings and serves processes with the same seed only "
                "(others relocate).  PYCDSMODE=PRELINK makes the image from "
                "a run of the program itself (docs/IMPORT.md, \"Prelinked "
                "images\").",
    epilog="exit status: 0 = written; 1 = error (unreadable archive, an "
           "entry that cannot be laid out); 2 = usage error.")
def cmd_prelink(args):
    import os
    from pycds import _dump
    args.archive = pycds.expand_abi(args.archive)
    if args.output is not None:
        args.output = pycds.expand_abi(args.output)
        if not args.force:
            _check_replaceable(args.output)
    try:
        trace = None
        if args.list_path is not None:
            from pycds._trace import read_trace
            trace = read_trace(args.list_path)
        out = _dump.prelink_image(args.archive, args.output, trace)
    except (OSError, ValueError, pycds.ArchiveError) as exc:
        raise CommandError(str(exc))
    print("%s: %s" % (out, format_bytes(os.stat(out).st_size)))
    return EXIT_OK


# ------------------------------------------------------------ status

_ENV_NAMES = ("PYCDSMODE", "PYCDSARCHIVE", "PYCDSLIST", "PYCDSVALIDATION",
              "PYCDSTRUST", "PYCDSCHECK", "PYCDSVERBOSE",
              "PYCDSAUTOTHRESHOLD")
_HOOK = "00-pycds.pth"


def _site_dirs():
    """The site-packages directories this interpreter reads .pth files
    from at start-up."""
    import site
    import sysconfig
    try:
        dirs = site.getsitepackages()
    except AttributeError:                 # an old virtualenv's site.py
        dirs = [sysconfig.get_paths()["purelib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


def _writable_target(path):
    """None when AUTO can write ``path``, else why not."""
    import os
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return "its directory %s does not exist" % directory
    if not os.access(directory, os.W_OK):
        return "its directory %s is not writable" % directory
    return None


def _layer_status(path, validation, trust_any, check):
    """What SHARE would make of the layer at ``path``: opened (nothing is
    imported), its image, its entries whose source is gone."""
    import os
    from pycds import _layers
    layer = {"path": path, "usable": False, "reason": None}
    try:
        # As SHARE opens it, lease handler included: the image's "pages"
        # say how this user's processes would keep it safe.
        opened = _pycds.Archive(path, trust_any,
                                _layers.in_place(not check))
    except (pycds.ArchiveError, OSError) as exc:
        layer["reason"] = str(exc)
        if not os.path.exists(path):
            layer["reason"] = "%s: missing" % path
        return layer
    info = pycds.inspect_archive(path)
    image = opened.prelinked()
    layer.update(
        usable=True, entries=len(info["entries"]),
        validation=validation or info["validation"],
        prelinked=("in place" if isinstance(image, dict)
                   else "not used: %s" % (image or "none in the archive")),
        pages=image["pages"] if isinstance(image, dict) else None,
        sources_missing=sorted(e["name"] for e in info["entries"]
                               if not os.path.exists(e["origin"])))
    return layer


def _status(environ):
    """The status report (a dict) for this interpreter and ``environ``."""
    import os
    import platform
    from pycds import _env
    warnings = []
    hooks = [os.path.join(d, _HOOK) for d in _site_dirs()]
    report = {
        "python": sys.executable, "version": platform.python_version(),
        "pycds": os.path.dirname(pycds.__file__),
        "environment": {k: environ[k] for k in _ENV_NAMES if k in environ},
        "hook": next((h for h in hooks if os.path.isfile(h)), None),
        "mode": _env.mode(environ, warnings.append),
        "layers": [], "serves": False, "warnings": warnings}
    mode = report["mode"]
    validation = _env.validation(environ, warnings.append)
    trust_any = _env.trust_any(environ, warnings.append)
    check = _env.flag("PYCDSCHECK", environ, warnings.append)
    _env.verbose(environ, warnings.append)
    _env.threshold(environ, warnings.append)

    def verdict(text, serves=False, ready=False):
        if report["hook"] is None and mode is not None:
            text = ("pycds is not switched on at start-up: no %s in %s "
                    "(make install puts it there); with it: %s"
                    % (_HOOK, " or ".join(_site_dirs()), text))
            serves = ready = False
        report.update(verdict=text, serves=serves, ready=ready or serves)
        return report

    if mode is None:
        return verdict("pycds is off: PYCDSMODE is %s (TRACE, DUMP, SHARE, "
                       "AUTO or PRELINK)" % ("%r" % environ["PYCDSMODE"]
                                             if "PYCDSMODE" in environ
                                             else "not set"))
    if mode in ("TRACE", "DUMP"):
        needed = ("PYCDSLIST",) + (("PYCDSARCHIVE",) if mode == "DUMP"
                                   else ())
        missing = [n for n in needed if not environ.get(n)]
        if missing:
            return verdict("PYCDSMODE=%s needs %s; pycds is off"
                           % (mode, " and ".join(missing)))
        if mode == "DUMP" and not os.path.isfile(environ["PYCDSLIST"]):
            return verdict("DUMP: the list %s is missing"
                           % environ["PYCDSLIST"])
        return verdict("%s: nothing is served in this mode" % mode,
                       ready=True)
    paths = pycds.layers(environ.get("PYCDSARCHIVE", ""))
    if not paths:
        return verdict("PYCDSMODE=%s needs PYCDSARCHIVE; pycds is off" % mode)
    report["layers"] = [_layer_status(p, validation, trust_any, check)
                        for p in paths]
    used = [layer["path"] for layer in report["layers"] if layer["usable"]]
    for layer in report["layers"]:
        if layer.get("pages") == _pycds.LEASE_NOT_OWNER:
            warnings.append(
                "%s: this user's processes cannot take a lease on another "
                "user's file: each copies the image's pages it uses and "
                "shares none; PYCDSIMMUTABLE=1 shares them where the file "
                "is only ever replaced by rename, as in a container image "
                "(docs/CONTAINERS.md)" % layer["path"])
    text = ("%s serves from %s" % (mode, ", ".join(used)) if used
            else "%s serves nothing: no layer is usable" % mode)
    if mode == "AUTO":
        last = report["layers"][-1]
        cannot = _writable_target(last["path"])
        if cannot is not None:
            text += "; AUTO cannot write %s: %s" % (last["path"], cannot)
        elif not last["usable"]:
            text += "; AUTO writes %s at exit" % last["path"]
    return verdict(text, bool(used))


def _print_status(report):
    out = ["python:   %s (%s)" % (report["python"], report["version"]),
           "pycds:    %s" % report["pycds"],
           "hook:     %s" % (report["hook"] or "not installed")]
    for name, value in sorted(report["environment"].items()):
        out.append("%-18s %s" % (name + ":", value))
    for layer in report["layers"]:
        if layer["usable"]:
            out.append("layer %s: usable, %d entries, validation %s, "
                       "prelinked image %s" % (
                           layer["path"], layer["entries"],
                           layer["validation"], layer["prelinked"]))
            if layer["pages"] is not None:
                out.append("  pages: %s" % layer["pages"])
            gone = layer["sources_missing"]
            if gone:
                out.append("  %d entries whose source is gone (never "
                           "served): %s" % (len(gone), ", ".join(gone[:5])
                                            + (", ..." if len(gone) > 5
                                               else "")))
        else:
            out.append("layer %s: not usable: %s" % (layer["path"],
                                                      layer["reason"]))
    out.extend("warning: %s" % w for w in report["warnings"])
    out.append("verdict:  %s" % report["verdict"])
    print("\n".join(out))


@command(
    "status", "say whether pycds would serve this interpreter, in this "
              "environment, and from which archives (runs nothing)",
    arg("--json", action="store_true",
        help="print the report as JSON: python, version, pycds, hook, "
             "environment, mode, layers, serves, ready, verdict, "
             "warnings"),
    description="Read the PYCDS* environment variables as start-up does, "
                "look for the start-up hook (00-pycds.pth) in this "
                "interpreter's site-packages and open each archive of "
                "PYCDSARCHIVE the way SHARE would (ABI key, owner and "
                "permissions, checksums, prelinked image), without "
                "importing anything from it.",
    epilog="exit status: 0 = SHARE, AUTO or PRELINK would serve from at "
           "least one archive, or TRACE/DUMP are set up; 1 = pycds would "
           "do nothing (the verdict says why); 2 = usage error.")
def cmd_status(args):
    import os
    report = _status(os.environ)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        _print_status(report)
    return EXIT_OK if report["ready"] else EXIT_PROBLEM


# ------------------------------------------------------------ entry point

def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Create, prelink, inspect and check pycds archives "
                    "(memory-mapped images of CPython code objects), and "
                    "say what SHARE would do here (status).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 = success; 1 = error (unreadable or corrupt "
               "archive, modules left out of a -l list, ...); 2 = usage "
               "error, or (verify) an archive made for another interpreter; "
               "130 = interrupted.\n`%s COMMAND --help` describes each "
               "command and its exit status." % PROG)
    parser.add_argument("--version", action="version",
                        version="%s %s" % (PROG, pycds.__version__))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, help, arguments, epilog, description, function in _COMMANDS:
        sub = subparsers.add_parser(name, help=help, epilog=epilog,
                                    description=description or help)
        for names, kwargs in arguments:
            sub.add_argument(*names, **kwargs)
        sub.set_defaults(function=function)
    return parser


def _progress_bar(stream):
    """progress(done, total, name) drawing a bar on a terminal."""
    import shutil
    width = shutil.get_terminal_size((80, 24)).columns
    last = [-1]

    def progress(done, total, name):
        percent = 100 * done // total if total else 100
        if name is not None and percent == last[0] and done % 50:
            return
        last[0] = percent
        bar_width = 30
        filled = bar_width * done // total if total else bar_width
        line = "[%s%s] %3d%% %d/%d %s" % ("#" * filled, "." * (bar_width - filled),
                                          percent, done, total, name or "")
        stream.write("\r" + line[:width - 1].ljust(width - 1))
        if name is None:
            stream.write("\n")
        stream.flush()
    return progress


def _report_left_out(left_out, verbose, stream):
    """Left-out items grouped by reason: counts and a few examples (all of
    them with --verbose)."""
    groups = {}
    for what, why in sorted(left_out.items()):
        groups.setdefault(why.kind, []).append((what, why))
    for kind, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print("left out %d: %s" % (len(items), kind), file=stream)
        shown = items if verbose else items[:3]
        for what, why in shown:
            print("  %s: %s" % (what, why), file=stream)
        if len(shown) < len(items):
            print("  ... (%d more; --verbose lists all, --json gives them "
                  "as data)" % (len(items) - len(shown)), file=stream)


def _check_output(output, list_path):
    """Refuse, before any work, an output that cannot be written."""
    import os
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise CommandError("%s: the directory %s does not exist"
                           % (output, directory))
    if not os.access(directory, os.W_OK):
        raise CommandError("%s: the directory %s is not writable"
                           % (output, directory))
    if list_path and os.path.realpath(output) == os.path.realpath(list_path):
        raise UsageError("-o %s would replace the list -l reads" % output)


def _foreign_lib(origin, ours):
    """The lib/pythonX.Y directory of another interpreter ``origin`` lies
    in, or None.  ``ours``: (this version 'X.Y', our stdlib dirs)."""
    import os
    import re
    m = re.match(r"(.*/lib/python(\d+\.\d+))/(.*)", origin)
    if m is None:
        return None
    lib, version, rest = m.groups()
    if version != ours[0]:
        return lib
    # Another build of this version: its stdlib, not its site-packages.
    if (not rest.startswith(("site-packages/", "dist-packages/"))
            and os.path.realpath(lib) not in ours[1]):
        return lib
    return None


def _set_aside(modules, list_path):
    """Take out of ``modules`` (a TRACE list) what this interpreter cannot
    archive through no fault of the list's modules: sources gone since the
    run (temporary modules of a test run), modules another interpreter
    loaded from its own library.  Returns {name: why}; says on stderr
    when another interpreter recorded the list."""
    import os
    import sysconfig
    paths = sysconfig.get_paths()
    ours = ("%d.%d" % sys.version_info[:2],
            {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")})
    set_aside, foreign = {}, {}
    for name, (origin, _) in sorted(modules.items()):
        lib = _foreign_lib(origin, ours)
        if lib is not None:
            foreign.setdefault(lib, []).append(name)
            set_aside[name] = LeftOut(
                "foreign", "recorded by another interpreter (%s)" % lib)
        elif not os.path.exists(origin):
            set_aside[name] = LeftOut("source gone",
                                      "source gone: %s" % origin)
    if foreign:
        libs = ", ".join(sorted(foreign))
        count = sum(map(len, foreign.values()))
        if count == len(modules):
            raise CommandError(
                "%s was recorded by another interpreter (its modules come "
                "from %s); this is Python %s (%s): trace again with this "
                "one" % (list_path, libs, sys.version.split()[0],
                         sys.executable))
        print("warning: %s was recorded (in part) by another interpreter: "
              "%d modules come from %s and are left out (this is Python "
              "%s)" % (list_path, count, libs, sys.version.split()[0]),
              file=sys.stderr)
    for name in set_aside:
        del modules[name]
    return set_aside


def _check_replaceable(path):
    """Refuse to overwrite a file that is not a pycds archive: a wrong -o
    must not cost the user a file."""
    from pycds._dump import not_replaceable
    why = not_replaceable(path)
    if why is not None:
        raise CommandError("%s: %s; not overwritten (--force replaces it)"
                           % (path, why), archive=path)


@command(
    "create", "archive the modules of a TRACE list, or every module (--all); "
              "no module code runs",
    arg("-l", "--list", dest="list_path", metavar="LIST",
        help="the module list TRACE wrote"),
    arg("--all", action="store_true",
        help="every importable .py module under the interpreter's stdlib "
             "and site-packages (or the --path directories)"),
    arg("--path", action="append", metavar="DIR",
        help="with --all: a directory to archive, as a sys.path entry "
             "(repeat for several; the first providing a name wins)"),
    arg("--include-tests", action="store_true",
        help="with --all: archive test packages too (test, tests, *_test, "
             "*_tests; left out by default)"),
    arg("-o", "--output", required=True,
        help="the archive to write; a file there is replaced only if it is "
             "a pycds archive (or empty), unless --force"),
    arg("--force", action="store_true",
        help="replace whatever file is at OUTPUT"),
    arg("--validation", default="timestamp",
        choices=("timestamp", "checked-hash", "unchecked"),
        help="how SHARE checks sources: stat (default), hash, or not at "
             "all; checked-hash for container images (see "
             "docs/CONTAINERS.md)"),
    arg("--no-pyc", action="store_true",
        help="compile every source instead of reading valid __pycache__ "
             ".pyc files"),
    arg("--json", action="store_true",
        help="print the result as JSON: archive, modules, bytes, left_out"),
    arg("-q", "--quiet", action="store_true",
        help="no progress bar and no report of what was left out"),
    arg("-v", "--verbose", action="store_true",
        help="list every module or file left out, not a few of each kind"),
    epilog="exit status: 0 = archive written (with --all, modules that do "
           "not compile or cannot be imported under their file's name are "
           "left out and reported, not an error; with -l, listed modules "
           "whose source is gone or that another interpreter recorded are "
           "left out and reported, not an error); 1 = with -l, some listed "
           "modules were left out for another reason (reported; the rest "
           "is archived), or the archive could not be written (checked "
           "before any work: its directory exists and is writable, and it "
           "is not the list); 2 = usage error.")
def cmd_create(args):
    import time
    if bool(args.all) == bool(args.list_path):
        raise UsageError("give one of -l LIST or --all")
    if (args.path or args.include_tests) and not args.all:
        raise UsageError("--path and --include-tests go with --all")
    args.output = pycds.expand_abi(args.output)
    _check_output(args.output, args.list_path)
    if not args.force:
        _check_replaceable(args.output)
    t0 = time.monotonic()
    skipped, trace = {}, None
    try:
        if args.all:
            from pycds import _all
            roots = args.path or _all.default_roots()
            modules, skipped = _all.find_modules(roots, args.include_tests)
        else:
            from pycds._trace import read_trace
            roots = None
            trace = read_trace(args.list_path)
            modules = trace.modules
            skipped = _set_aside(modules, args.list_path)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc))
    progress = None
    if not args.quiet and not args.json and sys.stderr.isatty():
        progress = _progress_bar(sys.stderr)
    counts = {}
    from pycds import _dump
    try:
        failed = _dump.dump_modules(modules, args.output, args.validation,
                                    progress=progress, counts=counts,
                                    use_pyc=not args.no_pyc,
                                    trace=trace)
    except (OSError, ValueError, pycds.ArchiveError) as exc:
        raise _write_error(args.output, exc)
    info = pycds.inspect_archive(args.output)
    left_out = dict(skipped)
    left_out.update(failed)
    seconds = time.monotonic() - t0
    if args.json:
        json.dump({"archive": args.output, "roots": roots,
                   "modules": len(info["entries"]),
                   "file_bytes": info["file_bytes"],
                   "compiled": counts.get(_dump.COMPILED, 0),
                   "from_pyc": counts.get(_dump.CACHED, 0),
                   "seconds": round(seconds, 3),
                   "prelinked": counts.get("prelinked"),
                   "left_out": left_out}, sys.stdout, indent=2,
                  sort_keys=True)
        sys.stdout.write("\n")
    else:
        if not args.quiet:
            _report_left_out(left_out, args.verbose, sys.stderr)
        print("%s: %d modules, %s (%d compiled, %d from .pyc, %d left out, "
              "%.1f s)" % (args.output, len(info["entries"]),
                           format_bytes(info["file_bytes"]),
                           counts.get(_dump.COMPILED, 0),
                           counts.get(_dump.CACHED, 0), len(left_out),
                           seconds))
        if counts.get("prelinked"):
            print("%s: prelinked image %s" % (args.output,
                                              counts["prelinked"]),
                  file=sys.stderr)
    if failed and not args.all:
        return EXIT_PROBLEM
    return EXIT_OK


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = args.function(args)
        sys.stdout.flush()
        return status
    except UsageError as exc:
        print("%s %s: error: %s" % (PROG, args.command, exc),
              file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        if getattr(args, "json", False):
            json.dump(dict(exc.fields, error=str(exc)), sys.stdout, indent=2,
                      sort_keys=True)
            sys.stdout.write("\n")
        else:
            print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_PROBLEM
    except BrokenPipeError:
        # `pycds-dump info x | head`: not an error.
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
