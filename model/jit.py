"""Numba's compiled kernels (`model.phase`, `model.projector`), with their cache where a read-only image can write.

Numba reads NUMBA_CACHE_DIR once, when it is imported, so every kernel module imports it from here.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "numba-cache"))

import numba  # noqa: E402

#: A compiled kernel: nopython, its machine code cached on disk between processes, and the GIL released while it
#: runs, so requests' kernels run side by side on a server's threads.
njit = numba.njit(cache=True, nogil=True)
