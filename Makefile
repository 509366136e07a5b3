# pycds — build, test, install, demo.                      (GNU make >= 4)
#
# Targets
#   make | make build [PYTHON=py]  build pycds and its extension _pycds for
#                                  PYTHON (default: python3 on PATH) into
#                                  build/<id>/
#   make print-builddir [PYTHON=py]  print that build dir (use with -s)
#   make pythons                   list the target interpreters found/skipped
#   make deps                      apt-get install what is missing
#   make test-slow                 make test with the slow checks too
#   make test [PYTEST_ARGS=...]    deps + build for every interpreter in
#                                  PYTHONS and the fuzzer (its regressions are
#                                  replayed) + run the suite with Debian's pytest
#                                  (SANITIZE=address,undefined: extension built
#                                  with ASan + UBSan, see SANITIZE below)
#   make install PYTHON=py         install pycds (+ pycds-dump) into PYTHON's
#                                  own site-packages / scripts dir (venv-aware)
#   make uninstall PYTHON=py       remove what `make install` put there
#   make demo [PYTHON=py] [DEMO_DIR=d] deps + tools/demo: TRACE/DUMP/SHARE a real
#                                  workload in a venv, hyperfine baseline vs SHARE
#   make demo-heap [PYTHON=py]     deps + build + tools/demo_heap.py (object
#                                  layer: dump_code/load_code of stdlib modules)
#   make bench [BENCH_ARGS=...]    deps + bench/run.py for pyenv 3.11.7 and Debian's
#                                  3.11 (those present; BENCH_PYTHONS="py ..." to
#                                  choose): installs the pinned workloads
#                                  (bench/requirements.txt) into each bench venv,
#                                  TRACE/DUMP/SHARE them, paired timing, ceiling,
#                                  memory, callgrind;
#                                  writes bench/RESULTS.md + bench/results.png
#                                  (~10-15 min; not part of `make test`)
#   make bench-pages [PAGES_ARGS=...]  deps + bench/shared_pages.py for pyenv
#                                  3.11.7, 3.12.1, 3.13.0, Debian's 3.11 and
#                                  non-PIE links of pyenv 3.12+ (tools/link-non-pie;
#                                  those present; PAGES_PYTHONS="py ..."): memory
#                                  of 8 processes, image pages touched vs written,
#                                  paired timing, in default conditions;
#                                  writes bench/SHARED_PAGES.md (~5 min)
#   make fuzz [FUZZ_SECONDS=N]     libFuzzer over the archive reader/relocator
#                                  (clang; fuzz/README.md); make fuzz-build,
#                                  make fuzz-corpus
#   make clean                     remove build/
#
# Build directories
#   Each interpreter gets build/<id>/, id = cp<XY>-<8 hex of sha256 of
#   "<realpath of sys.executable>\0<sys.version>">.  Debian's python3.11 and
#   pyenv's 3.11.7 have the same EXT_SUFFIX, so the id must come from the
#   binary, not the ABI tag.  A venv's python resolves to its base
#   interpreter and shares its build dir, which is importable: the package
#   build/<id>/pycds/ (copies of pycds/*.py) and the extension beside it
#   (-P: from the source tree, the tree's pycds/ would come first):
#       PYTHONPATH=$(make -s print-builddir PYTHON=py) py -P -c 'import pycds'
#   Object files and dependency files live in build/<id>/obj/.
#
# How the tests find the build dirs
#   `make test` builds for every interpreter, then runs pytest with
#       PYCDS_PYTHONS = the interpreter paths, ':'-separated
#       PYCDS_ROOT    = this directory
#   and the tests ask `make -s --no-print-directory print-builddir PYTHON=X`
#   (in PYCDS_ROOT) for each interpreter's build dir.  No mapping is
#   exported: the Makefile is the single place that knows the layout, and a
#   test run by hand (`PYCDS_PYTHONS=... python3 -m pytest tests`) finds the
#   same dirs.  pytest runs with MAKEFLAGS/MAKELEVEL removed from its
#   environment so that the makes the tests start behave like top-level ones.
#
# Target interpreters
#   PYTHON_CANDIDATES is the one list to edit: absolute paths, or pyenv:V for
#   a pyenv build (resolved with `pyenv prefix V`, else $PYENV_ROOT/versions/V,
#   else ~/.pyenv/versions/V, to <prefix>/bin/pythonX.Y).  Those present form
#   PYTHONS.

SHELL := /bin/bash
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:
.SUFFIXES:

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

PYTHON ?= python3
PYTHON_CANDIDATES := /usr/bin/python3.11 pyenv:3.11.7 pyenv:3.12.1 pyenv:3.13.0
# The interpreter that runs the test suite (and drives the targets).
TEST_PYTHON := /usr/bin/python3
PYTEST_ARGS ?=
# Test processes: one per core (pytest-xdist); tests that share a costly
# session fixture (the whole stdlib dumped) are one xdist group, so one
# process builds it.
TEST_JOBS ?= $(shell nproc)

DEB_PACKAGES := libelf-dev libxxhash-dev python3-dev python3-pip python3-pytest \
                python3-pytest-xdist python3-hypothesis hyperfine \
                python3-matplotlib gcc make binutils clang

CC ?= cc
ifeq ($(origin CC),default)
CC := gcc
endif
CFLAGS ?= -O2 -g
PYCDS_CFLAGS := -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter -std=c11 -D_GNU_SOURCE
# The writers' invariants are assert()s, checked in the sanitizer builds
# (SANITIZE=...) only: a release build does not pay for them.
PYCDS_CFLAGS += $(if $(SANITIZE),,-DNDEBUG)

# SANITIZE=address,undefined (any -fsanitize= list): the extension is built
# with those sanitizers into its own build dir (build/<id>-san-...), and
# `make test` runs every process of the suite with the ASan runtime
# preloaded (the interpreters are not instrumented; CPython leaks at exit
# by design, so no leak detection) and stops a child at the first report.
SANITIZE ?=
comma := ,
ifneq ($(SANITIZE),)
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_SUFFIX := -san-$(subst $(comma),-,$(SANITIZE))
SAN_ENV = SANITIZE=$(SANITIZE) \
  $(if $(filter address,$(subst $(comma), ,$(SANITIZE))),LD_PRELOAD=$(shell $(CC) -print-file-name=libasan.so)) \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
endif

# ---------------------------------------------------------------- discovery

# pyenv:V -> <prefix>/bin/python<X.Y>, or nothing when that build is absent.
pyenv_prefix = $(firstword \
    $(wildcard $(shell pyenv prefix $(1) 2>/dev/null)) \
    $(if $(PYENV_ROOT),$(wildcard $(PYENV_ROOT)/versions/$(1))) \
    $(wildcard $(HOME)/.pyenv/versions/$(1)))
resolve_pyenv = $(if $(call pyenv_prefix,$(1)),$(wildcard $(call pyenv_prefix,$(1))/bin/python$(basename $(1))))
resolve_candidate = $(if $(filter pyenv:%,$(1)),$(call resolve_pyenv,$(patsubst pyenv:%,%,$(1))),$(wildcard $(1)))

# Evaluated once, on first use: only test/pythons/demo pay for `pyenv prefix`.
PYTHONS = $(eval PYTHONS := $(strip $(foreach c,$(PYTHON_CANDIDATES),$(call resolve_candidate,$(c)))))$(PYTHONS)
SKIPPED = $(eval SKIPPED := $(strip $(foreach c,$(PYTHON_CANDIDATES),$(if $(call resolve_candidate,$(c)),,$(c)))))$(SKIPPED)

empty :=
space := $(empty) $(empty)
colon := :

# ------------------------------------------------- the selected interpreter

# One interpreter start gives everything the build and install need, one word
# each (paths with spaces are not supported).
PYINFO_SCRIPT := import hashlib, os, sys, sysconfig; \
  real = os.path.realpath(sys.executable); \
  h = hashlib.sha256((real + chr(0) + sys.version).encode()).hexdigest()[:8]; \
  p = sysconfig.get_paths(); \
  print("cp%d%d-%s" % (sys.version_info[0], sys.version_info[1], h), \
        sysconfig.get_config_var("EXT_SUFFIX"), p["include"], p["platlib"], \
        p["scripts"], sys.executable)

# Recursively expanded + self-replacing: the interpreter runs at most once,
# and only for goals that need it.
PYINFO = $(eval PYINFO := $(shell $(PYTHON) -c '$(PYINFO_SCRIPT)' 2>/dev/null))$(PYINFO)
PY_ID = $(word 1,$(PYINFO))
PY_EXT_SUFFIX = $(word 2,$(PYINFO))
PY_INCLUDE = $(word 3,$(PYINFO))
PY_PLATLIB = $(word 4,$(PYINFO))
PY_SCRIPTS = $(word 5,$(PYINFO))
PY_EXECUTABLE = $(word 6,$(PYINFO))


BUILDDIR = $(ROOT)/build/$(PY_ID)$(SAN_SUFFIX)
OBJDIR = $(BUILDDIR)/obj
PKGDIR = $(BUILDDIR)/pycds

SRCS := $(sort $(wildcard $(ROOT)/src/*.c))
HDRS := $(sort $(wildcard $(ROOT)/include/pycds/*.h))
PYSRCS := $(sort $(wildcard $(ROOT)/pycds/*.py))

OBJS = $(patsubst $(ROOT)/src/%.c,$(OBJDIR)/%.o,$(SRCS))
EXT = $(BUILDDIR)/_pycds$(PY_EXT_SUFFIX)
PYCOPIES = $(patsubst $(ROOT)/pycds/%,$(PKGDIR)/%,$(PYSRCS))

.PHONY: build print-builddir pythons deps deb-install test test-slow workloads install uninstall demo demo-heap bench bench-pages bench-data clean fuzz fuzz-build fuzz-corpus

# Only goals that build read the interpreter's facts; `make clean` or
# `make deps` must work even when PYTHON cannot start.
BUILD_GOALS := build print-builddir install uninstall workloads
ifneq ($(filter $(BUILD_GOALS),$(if $(MAKECMDGOALS),$(MAKECMDGOALS),$(.DEFAULT_GOAL))),)
ifeq ($(PY_EXECUTABLE),)
$(error cannot run PYTHON=$(PYTHON) to ask for its sysconfig)
endif

build: $(EXT) $(PYCOPIES)
	@# drop copies of .py files that no longer exist in pycds/, and the
	@# extension where builds before it was top-level put it
	@rm -f $(PKGDIR)/_pycds*.so
	@for f in $(PKGDIR)/*.py; do \
	  [ -e "$$f" ] || continue; \
	  [ -e "$(ROOT)/pycds/$${f##*/}" ] || { rm -f "$$f"; echo "removed stale $$f"; }; \
	done

print-builddir:
	@echo $(BUILDDIR)

# The real packages of the test suite's workloads (tests/test_workloads.py),
# pinned in bench/requirements.txt (their dependencies constrained by
# bench/constraints.txt) as `make bench` installs them, into
# $(BUILDDIR)/workloads for PYTHON; the test venvs put it on sys.path.  Once
# per version of the pins.  Needs PyPI (or pip's cache): without it the
# workloads are skipped, with the reason.
WORKLOAD_PACKAGES := boto3 flask jsonschema
WORKLOAD_PINS = $(shell grep -E '^($(subst $(space),|,$(WORKLOAD_PACKAGES)))==' \
                  $(ROOT)/bench/requirements.txt)
WORKLOADS_DIR = $(BUILDDIR)/workloads

workloads:
	@stamp='$(WORKLOADS_DIR)/pins.stamp'; \
	pins='$(WORKLOAD_PINS) $(shell grep -v '^#' $(ROOT)/bench/constraints.txt)'; \
	if [ "$$(cat $$stamp 2>/dev/null)" != "$$pins" ]; then \
	  echo "== workload packages for $(PY_EXECUTABLE): $(WORKLOAD_PINS)"; \
	  rm -rf '$(WORKLOADS_DIR)'; \
	  if env -u PYTHONPATH python3 -m pip --python '$(PY_EXECUTABLE)' install -q \
	       --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
	       --target '$(WORKLOADS_DIR)' -c '$(ROOT)/bench/constraints.txt' \
	       $(WORKLOAD_PINS); then \
	    echo "$$pins" > "$$stamp"; \
	  else \
	    rm -rf '$(WORKLOADS_DIR)'; \
	    echo "warning: workload packages not installed for $(PY_EXECUTABLE): their tests are skipped" >&2; \
	  fi; \
	fi

$(OBJDIR)/%.o: $(ROOT)/src/%.c $(ROOT)/Makefile | $(OBJDIR)
	$(CC) $(CPPFLAGS) -I$(ROOT)/include -I$(PY_INCLUDE) $(CFLAGS) $(SAN_FLAGS) $(PYCDS_CFLAGS) -MMD -MP -c $< -o $@

$(EXT): $(OBJS) | $(OBJDIR)
	$(if $(SRCS),,$(error no sources in $(ROOT)/src))
	@# Linked aside and renamed: a process loading the extension while it
	@# is rebuilt sees the old file or the new one, never half of one.
	$(CC) -shared $(LDFLAGS) $(SAN_FLAGS) -o $@.tmp $(OBJS) $(LDLIBS)
	mv -f $@.tmp $@

$(PKGDIR)/%.py: $(ROOT)/pycds/%.py | $(PKGDIR)
	cp $< $@

$(OBJDIR) $(PKGDIR):
	mkdir -p $@

-include $(OBJS:.o=.d)

install: build
	@test -n "$(PY_PLATLIB)" && test -n "$(PY_SCRIPTS)"
	mkdir -p $(PY_PLATLIB)/pycds $(PY_SCRIPTS)
	rm -rf $(PY_PLATLIB)/pycds/__pycache__
	rm -f $(PY_PLATLIB)/pycds/*.py $(PY_PLATLIB)/pycds/_pycds*.so $(PY_PLATLIB)/_pycds*.so
	install -m 644 $(PYCOPIES) $(PY_PLATLIB)/pycds/
	install -m 755 $(EXT) $(PY_PLATLIB)/
	env -u PYTHONDONTWRITEBYTECODE $(PY_EXECUTABLE) -m compileall -q $(PY_PLATLIB)/pycds
	# The activation line; its name sorts before other .pth files so that
	# as much as possible is imported through pycds.
	install -m 644 $(ROOT)/pycds/00-pycds.pth $(PY_PLATLIB)/00-pycds.pth
	printf '%s\n' '#!$(PY_EXECUTABLE)' \
	  '# installed by pycds `make install`' \
	  'from pycds.cli import main' \
	  'raise SystemExit(main())' > $(PY_SCRIPTS)/pycds-dump.tmp
	chmod 755 $(PY_SCRIPTS)/pycds-dump.tmp
	mv -f $(PY_SCRIPTS)/pycds-dump.tmp $(PY_SCRIPTS)/pycds-dump
	# pycds-VERSION.dist-info: pip show, importlib.metadata and pip
	# uninstall know what was installed (RECORD lists every file).
	$(PY_EXECUTABLE) $(ROOT)/tools/dist_info.py write $(ROOT) $(PY_PLATLIB) $(PY_SCRIPTS)/pycds-dump
	@echo "installed pycds into $(PY_PLATLIB) (pycds/, _pycds) and $(PY_SCRIPTS)/pycds-dump"

# Exactly the files the RECORD of `make install` lists.
uninstall:
	@test -n "$(PY_PLATLIB)" && test -n "$(PY_SCRIPTS)"
	$(PY_EXECUTABLE) $(ROOT)/tools/dist_info.py remove $(PY_PLATLIB) $(PY_SCRIPTS)/pycds-dump

endif

# --------------------------------------------------------- everything else

# Sub-makes below must not inherit -s/-n etc. from the outside unchanged for
# print-builddir: always call it with -s --no-print-directory.
SUBMAKE = $(MAKE) --no-print-directory -C $(ROOT)

pythons:
	@$(foreach p,$(PYTHONS),echo "target interpreter: $(p)";) true
	@$(foreach c,$(SKIPPED),echo "skipped (not present): $(c)";) true
	@$(if $(PYTHONS),,echo "no target interpreter found among: $(PYTHON_CANDIDATES)" >&2; exit 1)

# libFuzzer's runtime is packaged per clang version (libclang-rt-14-dev on
# Debian 12): asked of the clang installed, once it is.
deps:
	@$(SUBMAKE) -s deb-install PACKAGES='$(DEB_PACKAGES)'
	@$(SUBMAKE) -s deb-install \
	  PACKAGES="libclang-rt-$$(clang -dumpversion | cut -d. -f1)-dev"

deb-install:
	@missing=; \
	for p in $(PACKAGES); do \
	  dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "missing Debian packages:$$missing"; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null; then sudo=sudo; \
	else echo "error: not root and no sudo: install$$missing as root" >&2; exit 1; fi; \
	for p in $$missing; do \
	  apt-cache show $$p >/dev/null 2>&1 || { \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q; break; }; \
	done; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

test: deps pythons
	@set -e; for py in $(PYTHONS); do \
	  echo "== build for $$py"; $(SUBMAKE) build workloads PYTHON=$$py; \
	done
	$(if $(FUZZ_PYTHON),$(SUBMAKE) fuzz-build,)
	cd $(ROOT) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL $(SAN_ENV) \
	  PYCDS_PYTHONS='$(subst $(space),$(colon),$(PYTHONS))' PYCDS_ROOT='$(ROOT)' \
	  $(TEST_PYTHON) -m pytest tests -q -ra --durations=25 \
	    -n $(TEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

# The suite with its slow checks too (the CPython regrtest slice on every
# version, and in the checked mode): not part of `make test`.
test-slow:
	PYCDS_SLOW_TESTS=1 $(MAKE) test PYTEST_ARGS='$(PYTEST_ARGS)'

# The demo runs under PYTHON when given on the command line, else pyenv's
# 3.11.7, else Debian's 3.11.
ifeq ($(origin PYTHON),command line)
DEMO_PYTHON = $(PYTHON)
else
DEMO_PYTHON = $(firstword $(call resolve_candidate,pyenv:3.11.7) $(wildcard /usr/bin/python3.11))
endif

# DEMO_DIR: where the demo works (default build/demo, emptied first); one
# given must be missing or empty.
demo: deps
	@$(if $(DEMO_PYTHON),,echo "no interpreter for the demo" >&2; exit 1)
	$(ROOT)/tools/demo $(DEMO_PYTHON) "$(DEMO_DIR)"

demo-heap: deps
	@$(if $(DEMO_PYTHON),,echo "no interpreter for the demo" >&2; exit 1)
	$(SUBMAKE) build PYTHON=$(DEMO_PYTHON)
	PYTHONPATH=$$($(SUBMAKE) -s print-builddir PYTHON=$(DEMO_PYTHON)) \
	  $(DEMO_PYTHON) $(ROOT)/tools/demo_heap.py

# bench/run.py installs pycds into a venv of each interpreter (make install)
# and drives everything with Debian's python3 (matplotlib for the chart).
# BENCH_ARGS: e.g. --rounds 40, --only boto3,asyncio, --no-deep.
BENCH_ARGS ?=
BENCH_PYTHONS ?= $(strip $(foreach c,pyenv:3.11.7 /usr/bin/python3.11,$(call resolve_candidate,$(c))))
bench: deps
	@$(if $(BENCH_PYTHONS),,echo "no interpreter for the benchmarks" >&2; exit 1)
	cd $(ROOT) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PYCDS_BENCH_MAKE=1 \
	  $(TEST_PYTHON) bench/run.py $(BENCH_ARGS) $(BENCH_PYTHONS)

# Memory and pages of archives used in place, shared between processes.
PAGES_ARGS ?=
PAGES_PYTHONS ?= $(strip $(foreach c,pyenv:3.11.7 pyenv:3.12.1 pyenv:3.13.0 /usr/bin/python3.11,$(call resolve_candidate,$(c))))
bench-pages: deps
	@$(if $(PAGES_PYTHONS),,echo "no interpreter for the benchmark" >&2; exit 1)
	cd $(ROOT) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PYCDS_BENCH_MAKE=1 \
	  $(TEST_PYTHON) bench/shared_pages.py $(PAGES_ARGS) $(PAGES_PYTHONS)

# Data archives against pickle and json for workers that need large
# read-only data (bench/data.py): every interpreter, PIE and non-PIE.
DATA_ARGS ?=
DATA_PYTHONS ?= $(strip $(foreach c,pyenv:3.11.7 /usr/bin/python3.11 pyenv:3.12.1 pyenv:3.13.0,$(call resolve_candidate,$(c))))
bench-data: deps
	@$(if $(DATA_PYTHONS),,echo "no interpreter for the benchmark" >&2; exit 1)
	@set -e; for py in $(DATA_PYTHONS); do $(SUBMAKE) build PYTHON=$$py; done
	cd $(ROOT) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PYCDS_BENCH_MAKE=1 \
	  $(TEST_PYTHON) bench/data.py $(DATA_ARGS) $(DATA_PYTHONS)

# ------------------------------------------------------------------ fuzzing
# fuzz/README.md.  The fuzzer embeds pyenv 3.11.7's libpython (clang +
# libFuzzer + ASan + UBSan); checksums are not enforced in that build.
#   make fuzz [FUZZ_SECONDS=N] [FUZZ_ARGS=...]  run for N seconds (default
#       600) at nice 19, one worker; the growing corpus is build/fuzz/corpus
#       (seeded from build/fuzz/seeds), crashes land in build/fuzz/crashes/
#   make fuzz-corpus   regenerate build/fuzz/seeds/ (small real archives,
#       written by the interpreter the fuzzer links: archives carry its ABI
#       key, so they are made, not kept in git)
FUZZ_PYTHON = $(call resolve_candidate,pyenv:3.11.7)
FUZZ_PREFIX = $(patsubst %/bin/,%,$(dir $(FUZZ_PYTHON)))
FUZZ_CC := clang
FUZZ_SECONDS ?= 600
FUZZ_ARGS ?=
FUZZ_DIR := $(ROOT)/build/fuzz
FUZZER := $(FUZZ_DIR)/archive_fuzzer
FUZZ_SEEDS := $(FUZZ_DIR)/seeds
FUZZ_CFLAGS := -g -O1 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -D_GNU_SOURCE -std=c11

$(FUZZER): $(SRCS) $(HDRS) $(ROOT)/fuzz/archive_fuzzer.c $(ROOT)/Makefile
	@$(if $(FUZZ_PYTHON),,echo "make fuzz needs pyenv 3.11.7" >&2; exit 1)
	mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(ROOT)/include \
	  -I$(FUZZ_PREFIX)/include/python3.11 -o $@ \
	  $(ROOT)/fuzz/archive_fuzzer.c $(SRCS) \
	  -L$(FUZZ_PREFIX)/lib -Wl,-rpath,$(FUZZ_PREFIX)/lib -lpython3.11 -lm

fuzz-build: $(FUZZER)

# Fork mode with one worker: a crash, a timeout or the memory a child
# accumulates (archives whose objects were handed out stay mapped) ends
# that child only; the run goes on.  CPU time is appended to cpu.log.
fuzz: $(FUZZER) $(FUZZ_SEEDS)/.made
	mkdir -p $(FUZZ_DIR)/corpus $(FUZZ_DIR)/crashes
	cd $(FUZZ_DIR) && start=$$(date +%s) && \
	  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
	  /usr/bin/time -f "%U %S" -o $(FUZZ_DIR)/time.out \
	  nice -n 19 $(FUZZER) -max_total_time=$(FUZZ_SECONDS) -fork=1 \
	  -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
	  -rss_limit_mb=2048 -max_len=262144 -timeout=20 \
	  -artifact_prefix=$(FUZZ_DIR)/crashes/ $(FUZZ_ARGS) \
	  $(FUZZ_DIR)/corpus $(FUZZ_SEEDS) $(ROOT)/fuzz/regressions \
	  > $(FUZZ_DIR)/fuzz.log 2>&1; rc=$$?; \
	  echo "$$(date -u +%FT%TZ) wall=$$(( $$(date +%s) - start ))s user+sys=$$(cat $(FUZZ_DIR)/time.out) corpus=$$(ls $(FUZZ_DIR)/corpus | wc -l) crashes=$$(ls $(FUZZ_DIR)/crashes | wc -l)" \
	  | tee -a $(FUZZ_DIR)/cpu.log; tail -n 3 $(FUZZ_DIR)/fuzz.log; exit $$rc

$(FUZZ_SEEDS)/.made: $(SRCS) $(HDRS) $(ROOT)/fuzz/make_corpus.py
	@$(if $(FUZZ_PYTHON),,echo "make fuzz-corpus needs pyenv 3.11.7" >&2; exit 1)
	$(SUBMAKE) build PYTHON=$(FUZZ_PYTHON)
	rm -rf $(FUZZ_SEEDS) && mkdir -p $(FUZZ_SEEDS)
	PYTHONPATH=$$($(SUBMAKE) -s print-builddir PYTHON=$(FUZZ_PYTHON)) \
	  $(FUZZ_PYTHON) $(ROOT)/fuzz/make_corpus.py $(FUZZ_SEEDS)
	touch $@

fuzz-corpus: $(FUZZ_SEEDS)/.made

clean:
	rm -rf $(ROOT)/build
