"""The PYCDS* environment variables, read alike by activation (_boot) and
by ``pycds-dump status``; SHARE's common case is recognised, in the same
words, by the extension (src/activate.c).

Words do not depend on case: yes, true, on and 1 say yes; no, false, off,
0 and the empty string say no.  A value that means nothing is one warning
naming the variable and what it accepts, and the default is used.
"""
import os
import sys

from . import VALIDATION_MODES
from _pycds import NO_WORDS as NO, YES_WORDS as YES

MODES = ("TRACE", "DUMP", "SHARE", "AUTO", "PRELINK")
DEFAULT_THRESHOLD = 0.1

_warned = set()


def warn(message):
    """Print ``message`` as a pycds warning, once per process."""
    if message not in _warned:
        _warned.add(message)
        print("pycds: warning: %s" % message, file=sys.stderr)


def _word(environ, name):
    return environ.get(name, "").strip().lower()


def _bad(warn, name, value, accepted, instead):
    warn("%s=%r: accepted values are %s; %s" % (name, value, accepted,
                                                  instead))


def flag(name, environ=None, warn=warn, also_yes=()):
    """True or False for a yes/no variable (unset: False)."""
    environ = os.environ if environ is None else environ
    value = _word(environ, name)
    if value in YES + also_yes:
        return True
    if value not in NO:
        _bad(warn, name, environ[name], "/".join(YES + also_yes)
             + " or " + "/".join(NO[:-1]), "taken as no")
    return False


def mode(environ=None, warn=warn):
    """TRACE, DUMP, SHARE, AUTO, PRELINK, or None (off)."""
    environ = os.environ if environ is None else environ
    value = environ.get("PYCDSMODE", "").strip().upper()
    if value.lower() in NO:
        return None
    if value not in MODES:
        _bad(warn, "PYCDSMODE", environ["PYCDSMODE"],
             ", ".join(MODES) + " (any case) or off", "pycds is off")
        return None
    return value


def verbose(environ=None, warn=warn):
    """The PYCDSVERBOSE level: 0, 1 (yes), 2..."""
    environ = os.environ if environ is None else environ
    value = _word(environ, "PYCDSVERBOSE")
    if value in NO:
        return 0
    if value in YES:
        return 1
    if value.isdigit():
        return int(value)
    _bad(warn, "PYCDSVERBOSE", environ["PYCDSVERBOSE"],
         "0, 1, 2 or yes/no", "taken as 0")
    return 0


def validation(environ=None, warn=warn):
    """The PYCDSVALIDATION mode, or None (unset: the archive's own)."""
    environ = os.environ if environ is None else environ
    value = _word(environ, "PYCDSVALIDATION")
    if value == "":
        return None
    if value not in VALIDATION_MODES:
        _bad(warn, "PYCDSVALIDATION", environ["PYCDSVALIDATION"],
             ", ".join(VALIDATION_MODES), "ignored")
        return None
    return value


def trust_any(environ=None, warn=warn):
    """PYCDSTRUST=any (or yes): use archives others could have written."""
    return flag("PYCDSTRUST", environ, warn, also_yes=("any",))


def threshold(environ=None, warn=warn):
    """PYCDSAUTOTHRESHOLD, a fraction (default 0.1)."""
    environ = os.environ if environ is None else environ
    value = _word(environ, "PYCDSAUTOTHRESHOLD")
    if value == "":
        return DEFAULT_THRESHOLD
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        _bad(warn, "PYCDSAUTOTHRESHOLD", environ["PYCDSAUTOTHRESHOLD"],
             "a fraction from 0 to 1", "using %s" % DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    return number
