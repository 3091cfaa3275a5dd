"""braid.shared_array: NumPy arrays in shared memory that cross to pool workers without a copy.

An array made by ``shared_array`` lives in a memfd of this process. Pickling it (which is
how it travels to a ProcessPool worker) sends only a token: the creating process's pid, the
memfd's descriptor number and inode, and the view's offset, shape, dtype and strides. The
worker maps the same memory through ``/proc/<pid>/fd/<n>`` and sees the very same bytes, so
the cost does not grow with the array's size, and what a task writes into it is seen by the
parent. An array sent back from the worker (the same one or a view of it) unpickles in the
parent as a view of the original memory.

The creating process keeps the memfd open for as long as any array made from it is alive;
ProcessPool keeps a task's arguments alive until the task is settled, so an array may be
dropped right after it was submitted. An array of this kind made inside a worker is sent back
by value (the worker may exit before the parent reads it).
"""

import mmap
import os
import weakref

from . import _procworker

__all__ = ["shared_array"]


class _Segment:
    """One memfd mapped into this process."""

    __slots__ = ("owner", "fd", "ino", "size", "mm", "addr", "own_fd", "__weakref__")

    def __init__(self, owner, fd, ino, size, mm, own_fd):
        self.owner, self.fd, self.ino, self.size, self.mm, self.own_fd = owner, fd, ino, size, mm, own_fd
        self.addr = None

    def __del__(self):
        # The arrays built on the mapping hold this segment, so none is left when it goes.
        try:
            self.mm.close()
        except (BufferError, ValueError):
            pass
        if self.own_fd:
            os.close(self.fd)


_owned = weakref.WeakValueDictionary()     # fd -> _Segment made here
_attached = weakref.WeakValueDictionary()  # (owner pid, fd, inode) -> _Segment mapped from elsewhere
_array_class = None


def _numpy():
    try:
        import numpy
    except ImportError as exc:  # numpy is not a dependency of braid itself
        raise ImportError("braid.shared_array needs numpy (pip install numpy)") from exc
    return numpy


def _shared_array_class():
    global _array_class
    if _array_class is None:
        np = _numpy()

        class SharedArray(np.ndarray):
            """An ndarray whose memory is a braid shared segment (see braid.shared_array)."""

            def __array_finalize__(self, obj):
                # a view keeps the segment; an array of new memory made from one (a + 1,
                # a.copy()) is an ordinary array that pickles by value
                seg = getattr(obj, "_braid_segment", None)
                self._braid_segment = seg if seg is not None and _inside(self, seg) else None

            def __array_wrap__(self, arr, context=None, return_scalar=False):
                # a reduction (a.sum()) or a ufunc of 0-d arrays gives a NumPy scalar, as
                # on a plain array, unless its result was written into shared memory (out=)
                if arr.ndim == 0 and not _inside(arr, self._braid_segment):
                    return arr[()]
                return super().__array_wrap__(arr, context)

            def __reduce_ex__(self, protocol):
                seg = self._braid_segment
                plain = self.view(np.ndarray)
                if seg is None or (seg.own_fd and _procworker.IN_WORKER):
                    # made inside a worker, which may exit before the parent maps it
                    return plain.__reduce_ex__(protocol)
                offset = plain.__array_interface__["data"][0] - seg.addr
                return (_attach, (seg.owner, seg.fd, seg.ino, seg.size, offset, self.shape,
                                  self.dtype, self.strides))

        SharedArray.__module__ = "braid"
        _array_class = SharedArray
    return _array_class


def _inside(arr, seg):
    """Whether arr's bytes lie in seg's mapping: a view of it, not new memory."""
    if seg is None or seg.addr is None:
        return False
    lo = hi = arr.__array_interface__["data"][0]
    if arr.size:
        for n, stride in zip(arr.shape, arr.strides):
            if stride < 0:
                lo += (n - 1) * stride
            else:
                hi += (n - 1) * stride
        hi += arr.itemsize
    return seg.addr <= lo and hi <= seg.addr + seg.size


def _wrap(seg, offset, shape, dtype, strides):
    np = _numpy()
    cls = _shared_array_class()
    base = np.ndarray((seg.size,), np.uint8, buffer=seg.mm)
    if seg.addr is None:
        seg.addr = base.__array_interface__["data"][0]
    arr = np.ndarray(shape, dtype, buffer=seg.mm, offset=offset, strides=strides).view(cls)
    arr._braid_segment = seg
    return arr


def shared_array(shape, dtype=float):
    """A zero-filled NumPy array of ``shape`` and ``dtype`` in shared memory.

    Passing it to (or returning it from) a ``braid.ProcessPool`` task costs the same
    whatever its size: the worker maps the same memory instead of receiving a copy.
    """
    np = _numpy()
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(f"braid.shared_array cannot hold Python objects (dtype {dtype}): another "
                        "process would read pointers into this one's memory; use a numeric, "
                        "bool, fixed-size string or structured dtype of those")
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    size = max(nbytes, 1)  # mmap cannot map 0 bytes
    fd = os.memfd_create("braid.shared_array", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
        ino = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        raise
    seg = _Segment(os.getpid(), fd, ino, size, mm, own_fd=True)
    _owned[fd] = seg
    return _wrap(seg, 0, shape, dtype, None)


def _attach(owner, fd, ino, size, offset, shape, dtype, strides):
    """Unpickles a shared array: a view of the segment, mapped here if needed."""
    if owner == os.getpid():
        seg = _owned.get(fd)
        if seg is None or seg.ino != ino:
            raise RuntimeError("a braid.shared_array came back after its memory was released")
        return _wrap(seg, offset, shape, dtype, strides)
    key = (owner, fd, ino)
    seg = _attached.get(key)
    if seg is None:
        try:
            f = os.open(f"/proc/{owner}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeError(f"cannot map the braid.shared_array of process {owner}: {exc}") from exc
        try:
            if os.fstat(f).st_ino != ino:
                raise RuntimeError(f"the braid.shared_array of process {owner} was released")
            mm = mmap.mmap(f, size)
        finally:
            os.close(f)
        seg = _Segment(owner, fd, ino, size, mm, own_fd=False)
        _attached[key] = seg
    return _wrap(seg, offset, shape, dtype, strides)
