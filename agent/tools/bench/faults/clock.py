"""Step the wall clock of one process, as NTP or an operator steps a gateway's clock.

We cannot step the machine's clock safely (other processes, and CI, share it), so the step
is injected into the agent process at the C library boundary: a small ``LD_PRELOAD``
library adds an offset, read from a shared 8-byte file, to ``CLOCK_REALTIME`` (and
``gettimeofday``, ``time``). ``CLOCK_MONOTONIC`` is untouched, as in a real step: the
agent's timers and sleeps keep running, only what it reads as the date jumps.

libfaketime is the usual tool for this, but the 0.9.10 in Debian bookworm cannot leave the
monotonic clock alone under Python 3.11: ``time.sleep`` (``clock_nanosleep`` with
``TIMER_ABSTIME``) fails with EINVAL (wolfcw/libfaketime#426), and faking the monotonic
clock too is not a clock step. So the library is built here, from the source below, with
the C compiler the Cython extensions need.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

__all__ = ["ClockStepper", "ClockUnavailable"]

_ENV = "EDGEGOV_FAULT_CLOCK_FILE"

_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*gettime_fn)(clockid_t, struct timespec *);
static gettime_fn real_gettime;
static volatile int64_t *offset_ns; /* the harness writes it; we only read */

static void setup(void) {
    if (!real_gettime) real_gettime = (gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    if (!offset_ns) {
        const char *path = getenv("EDGEGOV_FAULT_CLOCK_FILE");
        if (!path) return;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        void *p = mmap(NULL, 8, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (p != MAP_FAILED) offset_ns = (volatile int64_t *)p;
    }
}

__attribute__((constructor)) static void init(void) { setup(); }

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_gettime) setup();
    int r = real_gettime(id, ts);
    if (r == 0 && offset_ns && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec + *offset_ns;
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
        if (ts->tv_nsec < 0) { ts->tv_nsec += 1000000000L; ts->tv_sec -= 1; }
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return r;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


class ClockUnavailable(Exception):
    """The shim cannot be built here (no C compiler); the message says what to install."""


class ClockStepper:
    """The shim built in ``workdir``; :meth:`env` for the process, :meth:`set` to step it.

    Raises:
        ClockUnavailable: no C compiler (``cc``/``gcc``), or it failed.
    """

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise ClockUnavailable("stepping the clock needs a C compiler (apt-get install gcc)")
        src = workdir / "clockstep.c"
        src.write_text(_SOURCE)
        self.library = workdir / "libclockstep.so"
        r = subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-o", str(self.library), str(src), "-ldl"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise ClockUnavailable(f"building the clock shim failed: {r.stderr.strip()[-500:]}")
        self.file = workdir / "clock-offset"
        self.offset_s = 0.0
        self.set(0.0)

    def env(self) -> dict[str, str]:
        """What the process's environment needs (added to, not replacing, the rest)."""
        preload = os.environ.get("LD_PRELOAD", "")
        return {
            "LD_PRELOAD": f"{self.library} {preload}".strip(),
            _ENV: str(self.file),
        }

    def set(self, offset_s: float) -> None:
        """The process's wall clock reads true time + ``offset_s`` from now on."""
        data = struct.pack("<q", round(offset_s * 1e9))
        if not self.file.exists():
            self.file.write_bytes(data)
        else:  # in place: the process has it mapped; an aligned 8-byte write is one store
            fd = os.open(self.file, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
        self.offset_s = offset_s

    def step(self, seconds: float) -> None:
        """Step the clock by ``seconds`` (negative: back)."""
        self.set(self.offset_s + seconds)
