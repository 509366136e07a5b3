"""The signal a lease break sends, for archives used in place.

A process that uses an archive's prelinked image in place holds a read
lease on the file; before anyone opens it for writing or truncates it,
the kernel sends the process this signal and waits.  The handler moves
the file's pages the process uses into private memory and gives the
lease up (src/lease.c; docs/IMPORT.md, "Files rewritten in place").  A
Python-level handler, so that it runs in the main thread between two
bytecodes, when no thread is writing to those pages.
"""
import os
import sys

import _signal

from . import _pycds

# A real-time signal: queued, and not one a program or library uses by
# default (glibc keeps those below SIGRTMIN for itself).
SIGNAL = _signal.SIGRTMIN + 4

_set_up = False


def _on_break(signum, frame):
    try:
        _pycds.lease_release()
    except Exception as e:      # never raise into whatever code was running
        print("pycds: warning: cannot move an archive's pages before it is "
              "rewritten: %s" % e, file=sys.stderr)


def set_up():
    """Once per process, before an image is mapped: the handler, unless
    the program has its own for this signal, and a lease of its own in a
    forked child.  Without a handler an image is copied, not shared."""
    global _set_up
    if _set_up:
        return
    from ._env import flag      # it imports pycds, which imports this
    _set_up = True
    signum = SIGNAL
    try:
        if _signal.getsignal(signum) != _signal.SIG_DFL:
            signum = 0
        else:
            _signal.signal(signum, _on_break)
    except ValueError:          # not the main thread of the main interpreter
        signum = 0
    if signum:
        os.register_at_fork(after_in_child=_pycds.lease_after_fork)
    _pycds.lease_setup(signum, flag("PYCDSIMMUTABLE"))
