"""pycds-dump: inspect and check pycds archives from the command line.

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

import pycds

PROG = "pycds-dump"

# Exit statuses of every subcommand.
EXIT_OK = 0
EXIT_PROBLEM = 1      # error, unreadable/corrupt archive, checksum mismatch
EXIT_UNUSABLE = 2     # well-formed archive this interpreter cannot use

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
    """An error reported as ``pycds-dump: error: <message>``, exit 1."""


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


def _inspect(path):
    try:
        return pycds.inspect_archive(path)
    except (pycds.ArchiveError, OSError) as exc:
        raise _open_error(path, exc)


# ------------------------------------------------------------ subcommands

@command(
    "info", "describe an archive: ABI key, sizes, object types, entries",
    arg("archive", help="the archive file"),
    arg("--json", action="store_true",
        help="print pycds.inspect_archive()'s dict as JSON"),
    arg("--entries", type=int, default=20, metavar="N",
        help="list at most N entries (default 20, 0 = all)"),
)
def cmd_info(args):
    info = _inspect(args.archive)
    if args.json:
        json.dump(info, sys.stdout, indent=2, sort_keys=True, default=_json_default)
        sys.stdout.write("\n")
        return EXIT_OK

    out = []
    key = info.get("key") or {}
    entries = info.get("entries") or []
    out.append("archive:        %s (%s)" % (info.get("path", args.archive),
                                             format_bytes(info.get("file_bytes"))))
    out.append("format version: %s" % info.get("format_version"))
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
        shown = entries if args.entries <= 0 else entries[:args.entries]
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

    print("\n".join(out))
    return EXIT_OK


@command(
    "verify", "check an archive's checksums and whether this interpreter can use it",
    arg("archive", help="the archive file"),
    epilog="exit status: 0 = every checksum matches and this interpreter can "
           "use the archive; 1 = error, unreadable file or a checksum/format "
           "problem; 2 = well formed, but made for another interpreter "
           "(its ABI key differs; `info` says how). A command-line usage "
           "error also exits 2, as with every argparse program.",
)
def cmd_verify(args):
    try:
        problems = pycds.verify_archive(args.archive)
    except (pycds.ArchiveError, OSError) as exc:
        raise _open_error(args.archive, exc)
    try:
        info = pycds.inspect_archive(args.archive)
    except (pycds.ArchiveError, OSError) as exc:
        info = None
        if not problems:
            problems = [str(exc)]

    if problems:
        for problem in problems:
            print("problem: %s" % problem)
    else:
        print("ok: checksums match")
    if info is not None:
        if info.get("usable"):
            print("usable: yes, by this interpreter")
        else:
            print("usable: no: %s" % (info.get("reason") or "unknown reason"))
    if problems:
        return EXIT_PROBLEM
    if info is None or not info.get("usable"):
        return EXIT_UNUSABLE
    return EXIT_OK


# ------------------------------------------------------------ entry point

def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and check pycds archives (memory-mapped images "
                    "of CPython code objects).",
        epilog="`%s COMMAND --help` describes a command and its exit "
               "status." % PROG)
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


@command(
    "create", "archive the modules of a TRACE list (no module code runs)",
    arg("-l", "--list", required=True, dest="list_path",
        help="the module list TRACE wrote"),
    arg("-o", "--output", required=True, help="the archive to write"),
    arg("--validation", default="timestamp",
        choices=("timestamp", "checked-hash", "unchecked"),
        help="how SHARE checks sources: stat (default), hash, or not at all"),
    epilog="exit status: 0 = every module archived; 1 = some were left out "
           "(reported; the rest is archived) or the archive could not be "
           "written.")
def cmd_create(args):
    try:
        failed = pycds.dump(args.list_path, args.output, args.validation)
    except (OSError, ValueError, pycds.ArchiveError) as exc:
        raise CommandError(str(exc))
    for name, why in sorted(failed.items()):
        print("left out %s: %s" % (name, why), file=sys.stderr)
    info = pycds.inspect_archive(args.output)
    print("%s: %d modules, %s" % (args.output, len(info["entries"]),
                                  format_bytes(info["file_bytes"])))
    return EXIT_PROBLEM if failed else EXIT_OK


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.function(args)
        sys.stdout.flush()
        return status
    except CommandError as exc:
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
