"""AUTO: share from the archive when it is good; when it is missing, foreign
or too stale, run normally and write a fresh one at exit.

    PYCDSMODE=AUTO PYCDSARCHIVE=app.img python app.py

With several layers (``base.img:app.img``) AUTO serves from all of them
and writes only the last one, the application's layer; the others are
read-only (baked into an image, say).  At exit (``atexit``, so after the
program's own exit handlers) it decides:

* the last layer is missing, unreadable, made for another interpreter, or
  made with another validation mode than ``PYCDSVALIDATION`` asks for:
  rebuild;
* its prelinked image is not used for a fault of the file's (damaged, made
  by another version of pycds, as after an upgrade, or from another
  version of the archive): rebuild, so that later runs use it in place;
* a module this run loaded was stale in the archive (its source changed
  since): refresh, which recompiles just the changed modules;
* otherwise, of the modules this run loaded from ``.py``/``.pyc`` files,
  those that a layer holds but refused (another file would win) plus
  those no layer holds are counted: more than ``PYCDSAUTOTHRESHOLD`` (a
  fraction, default 0.1) of the loaded modules: refresh.  A threshold,
  because which modules a run loads may vary from run to run (code paths,
  plugins), and rewriting the archive because one run imported a couple
  of extra modules costs more than it saves.

What a run loads from files is noted as it loads, in ``ARCHIVE.journal``:
a run that never reaches its exit (SIGTERM, ``os._exit``) leaves its
modules there, and the next run counts them as its own.

Refreshing takes ``ARCHIVE.lock`` with a non-blocking ``flock``: a process
that does not get it (another one is writing) leaves at once, and so does
one that finds the archive replaced since it started (another process
refreshed it meanwhile).  The new archive holds the old one's entries
whose sources still exist plus this run's modules (minus those an earlier
layer served); an entry whose source has not changed keeps its code from
the old archive, so only changed or new modules are compiled (or read
from a valid ``.pyc``).  It is written to a temporary file and renamed:
readers see the old archive or the new one, never a torn file.

AUTO writes only where nothing is, over an empty file or over a pycds
archive (of any interpreter or format version, damaged or not); another
file at the last layer's path gets one warning at start and is left as
it is.  An old code object is reused only if the source read for the new
archive hashes to what its entry recorded (_dump._entry): a file saved
during the refresh is never recorded with the code of its old version.
"""
import atexit
import fcntl
import os
import sys

import _pycds
import pycds

from . import _dump, served_code
from ._layers import STACK, finder_over, open_finder
from ._regular_file import NotRegularFile, open_lock
from ._trace import (Trace, clear_journal, loaded_modules, record,
                     written_words)

DEFAULT_THRESHOLD = 0.1


def _say(verbose, message, level=1):
    if verbose >= level:
        print("pycds: auto: %s" % message, file=sys.stderr)


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Auto:
    def __init__(self, archive, validation=None, verbose=0, trust_any=False,
                 threshold=DEFAULT_THRESHOLD):
        self.paths = pycds.layers(archive)
        self.target = os.path.abspath(self.paths[-1])
        self.validation = validation          # None: keep the archive's
        self.verbose = verbose
        self.trust_any = trust_any
        self.threshold = threshold
        self.archives = []                    # (path, _pycds.Archive)
        self.problem = None                   # why the last layer is unusable
        self.started_with = None
        self.writable = True                  # the last layer is ours

    # -------------------------------------------------------------- start

    def start(self):
        finders, used = [], []
        last = len(self.paths) - 1
        for i, path in enumerate(self.paths):
            is_target = i == last
            if is_target:
                self.started_with = _identity(path)
            f = open_finder(path, None, self.verbose, self.trust_any,
                            warn=not is_target)
            if isinstance(f, str):
                if is_target:
                    foreign = _dump.not_replaceable(path)
                    if foreign is not None:
                        print("pycds: warning: AUTO leaves %s alone: %s "
                              "(it replaces only a pycds archive)"
                              % (path, foreign), file=sys.stderr)
                        self.writable = False
                        continue
                    self.problem = ("missing" if self.started_with is None
                                    else f)
                    _say(self.verbose, "%s: %s; this run writes it at exit"
                         % (path, self.problem))
                continue
            finders.append(f)
            used.append(path)
            self.archives.append((path, f.archive))
        if finders:
            STACK.install(finders, used)
        if self.writable:
            # What this run loads is noted as it loads: a run that ends by
            # SIGTERM or os._exit() leaves it for the next one to archive.
            # AUTO says why it cannot write when it would (at exit).
            self.journal = record(self.target, warn=False)
            atexit.register(self.at_exit)

    # --------------------------------------------------------------- exit

    def _why_refresh(self, loaded):
        """Why the last layer must be rebuilt, or None."""
        if self.problem is not None:
            return self.problem
        target = dict(self.archives).get(self.target)
        if target is not None and target.image_outdated():
            return "its prelinked image is not used: %s" % (
                target.prelinked(),)
        if self.validation is not None:
            mode = pycds.inspect_archive(self.target,
                                         self.trust_any).get("validation")
            if mode != self.validation:
                return "made with validation %s, %s wanted" % (
                    mode, self.validation)
        kinds = pycds.stats()["kinds"]
        stale, refused, new = [], [], []
        for name in loaded:
            module = sys.modules.get(name)
            loader = getattr(getattr(module, "__spec__", None), "loader",
                             None)
            if served_code(loader) is not None:
                continue
            kind = kinds.get(name)
            if kind in ("stale", "refused"):
                (stale if kind == "stale" else refused).append(name)
            elif not any(name in a for _, a in self.archives):
                new.append(name)
        _say(self.verbose, "%d modules loaded from files: %d stale, %d "
             "refused, %d not archived" % (len(loaded), len(stale),
                                          len(refused), len(new)), 2)
        if stale:
            return "%d modules stale (%s)" % (
                len(stale), ", ".join(sorted(stale)[:5])
                + (", ..." if len(stale) > 5 else ""))
        other = len(refused) + len(new)
        if other and other > self.threshold * len(loaded):
            return ("%d of %d modules loaded from files not served "
                    "(%d refused, %d not archived)"
                    % (other, len(loaded), len(refused), len(new)))
        return None

    def at_exit(self):
        try:
            self._at_exit()
        except Exception as e:          # never spoil the program's exit
            print("pycds: warning: AUTO could not refresh %s: %s: %s"
                  % (self.target, type(e).__name__, e), file=sys.stderr)

    def _at_exit(self):
        self.journal.merging = True     # what the refresh itself imports
        loaded = loaded_modules()
        why = self._why_refresh(loaded)
        if why is None:
            return
        try:
            lock = open_lock(self.target + ".lock")
        except NotRegularFile as e:
            print("pycds: warning: AUTO does not refresh %s: %s"
                  % (self.target, e), file=sys.stderr)
            return
        except OSError as e:
            # Silent, AUTO would never serve and the user would not know.
            print("pycds: warning: AUTO cannot write %s (%s): %s"
                  % (self.target, why, e), file=sys.stderr)
            return
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                _say(self.verbose, "another process is writing %s"
                     % self.target)
                return
            if _identity(self.target) != self.started_with:
                _say(self.verbose, "%s was replaced since this run started"
                     % self.target)
                return
            self.refresh(loaded, why)
            clear_journal(self.target)

    def _old_entries(self):
        """name -> entry (inspect_archive's) of the usable old last
        layer."""
        if self.problem is not None:
            return {}
        info = pycds.inspect_archive(self.target, self.trust_any)
        if not info.get("usable"):
            return {}
        return {e["name"]: e for e in info["entries"]}

    def _reusable(self, modules, entries):
        """name -> (code, hash of its source) of the old last layer's
        entries whose source is unchanged: what SHARE would serve from it
        now.  The source may change again before it is read for the new
        archive: the hash tells (_dump._entry)."""
        if not entries:
            return {}
        old = {name: (e["origin"], bool(e["package"]))
               for name, e in entries.items()}
        try:
            archive = _pycds.Archive(self.target, self.trust_any)
        except (pycds.ArchiveError, OSError):
            return {}
        finder = finder_over(archive)
        reuse = {}
        for name in sorted(modules):
            if old.get(name) != modules[name]:
                continue
            parent = name.rpartition(".")[0]
            path = None
            if parent:
                module = sys.modules.get(parent)
                path = getattr(module, "__path__", None)
                if path is None and parent in old and old[parent][1]:
                    path = [os.path.dirname(old[parent][0])]
                if path is None:
                    continue
            try:
                spec = finder.find_spec(name, path)
            except Exception:
                spec = None
            code = served_code(spec.loader) if spec is not None else None
            if code is not None:
                reuse[name] = (code, entries[name]["source_xxh3"])
        return reuse

    def refresh(self, loaded, why):
        old = self._old_entries()
        modules = {name: (e["origin"], bool(e["package"]))
                   for name, e in old.items() if os.path.exists(e["origin"])}
        base = [a for path, a in self.archives
                if os.path.abspath(path) != self.target]
        for name, entry in loaded.items():
            module = sys.modules.get(name)
            loader = getattr(getattr(module, "__spec__", None), "loader",
                             None)
            if (name not in modules and served_code(loader) is not None
                    and any(name in a for a in base)):
                continue                # an earlier layer serves it
            modules[name] = entry
        reuse = self._reusable(modules, old)
        validation = self.validation
        if validation is None:
            validation = "timestamp"
            if self.problem is None:
                validation = pycds.inspect_archive(
                    self.target, self.trust_any).get("validation",
                                                      "timestamp")
        counts = {}
        # This run is the model of those that will use the archive: the
        # modules it loaded are every process's.
        trace = Trace()
        trace.add_run(loaded, written_words(modules))
        failed = _dump.dump_modules(modules, self.target, validation,
                                    reuse=reuse, counts=counts, trace=trace)
        for name, reason in sorted(failed.items()):
            _say(self.verbose, "left out %s: %s" % (name, reason))
        _say(self.verbose, "wrote %s (%s): %d modules, %d reused, %d read "
             "from .pyc, %d compiled, %d left out"
             % (self.target, why, counts.get("archived", 0),
                counts.get(_dump.REUSED, 0), counts.get(_dump.CACHED, 0),
                counts.get(_dump.COMPILED, 0), len(failed)))


def start(archive, validation=None, verbose=0, trust_any=False,
          threshold=DEFAULT_THRESHOLD):
    auto = Auto(archive, validation, verbose, trust_any, threshold)
    if not auto.paths:
        print("pycds: warning: PYCDSMODE=AUTO needs PYCDSARCHIVE; pycds is "
              "off", file=sys.stderr)
        return None
    auto.start()
    return auto
