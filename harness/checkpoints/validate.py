"""Strict validation of one safetensors file, reading only its prefix and header.

The checks and their order follow the reference reader (huggingface/safetensors, Rust, 0.8):

1. file shorter than 8 bytes                                   -> HeaderTooSmallError
2. header length N > 100,000,000                               -> HeaderTooLargeError
3. 8 + N past the end of the file                              -> InvalidHeaderLengthError
4. header not UTF-8                                            -> InvalidHeaderError
5. header not JSON of the right shape                          -> InvalidHeaderDeserializationError
   (refined: DuplicateKeyError, UnknownDtypeError, InvalidMetadataError)
6. then, for each tensor in (start, end) order:
   offsets do not start at 0 / leave a gap / overlap / end < start -> InvalidOffsetError
   element count or bit size overflows 64 bits                 -> ValidationOverflowError
   sub-byte tensor not a whole number of bytes                 -> MisalignedSliceError
   end - start != size from shape and dtype                    -> TensorInvalidInfoError
7. last tensor does not end at the end of the file             -> MetadataIncompleteBufferError

The buffer itself is never read: a 16 GB checkpoint is validated by reading a few kilobytes.
Values are not checked (NaN and Inf are legal tensor contents).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mali_hil.harness.checkpoints.faults import (
    CheckpointNotFoundError,
    HeaderTooLargeError,
    HeaderTooSmallError,
    InvalidHeaderLengthError,
    InvalidOffsetError,
    JobHeaderTooLargeError,
    MetadataIncompleteBufferError,
    MisalignedSliceError,
    TensorInvalidInfoError,
    ValidationOverflowError,
)
from mali_hil.harness.checkpoints.format import DTYPE_BITS, U64_MAX, TensorInfo
from mali_hil.harness.checkpoints.header_scan import read_header

MAX_HEADER_SIZE = 100_000_000  # the format's limit, as the reference reader enforces it
#: The limit for checkpoints given to load jobs, whose worker parses the header inside the board's RAM budget before
#: any loader runs. Read entry by entry (header_scan) a header still costs about 7 bytes of RAM per header byte
#: (15 MB: 110 MiB over the process's own), which a 256 MiB board's worker (Python, tinygrad, PoCL) does not have:
#: a 15 MB header was `oom-killed` there under the old 16 MiB limit. 4 MiB costs under 30 MiB. Real checkpoints'
#: headers are far below it (about 150 bytes a tensor: 4 MiB is over 25,000 tensors in one file).
JOB_HEADER_LIMIT = 4 << 20
PREFIX_SIZE = 8


@dataclass(frozen=True)
class CheckpointInfo:
    """A valid safetensors file: where its buffer starts and what it holds (tensors in offset order)."""

    path: Path
    header_size: int
    file_size: int
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str] | None

    @property
    def data_start(self) -> int:
        """File offset of the byte buffer (tensor offsets are relative to it)."""
        return PREFIX_SIZE + self.header_size

    @property
    def tensor_bytes(self) -> int:
        return self.file_size - self.data_start

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.tensors)

    def tensor(self, name: str) -> TensorInfo:
        for info in self.tensors:
            if info.name == name:
                return info
        raise KeyError(f"{self.path} has no tensor {name!r}")


def validate(path: str | Path, max_header: int = MAX_HEADER_SIZE) -> CheckpointInfo:
    """Check one ``.safetensors`` file; return what it holds or raise the ``CheckpointError`` it breaks.
    ``max_header``: refuse longer headers (HeaderTooLargeError) before reading them."""
    path = Path(path)
    header_size, file_size, raw = _read_header(path, max_header)
    header = read_header(raw, path)
    tensors = tuple(sorted(header.tensors, key=lambda t: (t.start, t.end, t.name)))
    buffer_end = check_tensors(tensors, path)
    if PREFIX_SIZE + header_size + buffer_end != file_size:
        raise MetadataIncompleteBufferError(
            path,
            f"tensors end at file byte {PREFIX_SIZE + header_size + buffer_end} but the file has {file_size} bytes",
            expected=file_size,
            actual=PREFIX_SIZE + header_size + buffer_end,
        )
    return CheckpointInfo(path, header_size, file_size, tensors, header.metadata)


def check_tensors(tensors: tuple[TensorInfo, ...], path: str | Path) -> int:
    """Run the per-tensor checks on tensors sorted by offsets; return where the buffer ends."""
    position = 0
    for info in tensors:
        if info.start != position or info.end < info.start:
            raise InvalidOffsetError(
                path,
                f"tensor {info.name!r} has data_offsets [{info.start}, {info.end}] but the previous tensor ends"
                f" at {position}",
                tensor=info.name,
                expected=position,
                actual=info.start,
            )
        position = info.end
        size = _byte_size(info, path)
        if info.end - info.start != size:
            raise TensorInvalidInfoError(
                path,
                f"tensor {info.name!r} ({info.dtype}, shape {list(info.shape)}) needs {size} bytes but its"
                f" data_offsets [{info.start}, {info.end}] span {info.end - info.start}",
                tensor=info.name,
                expected=size,
                actual=info.end - info.start,
            )
    return position


def _byte_size(info: TensorInfo, path: str | Path) -> int:
    """Bytes the tensor needs, with the reference reader's 64-bit overflow and whole-byte checks."""
    count = 1
    for dim in info.shape:
        count *= dim
        if count > U64_MAX:
            raise ValidationOverflowError(
                path,
                f"tensor {info.name!r} shape {list(info.shape)} has more than 2**64 - 1 elements",
                tensor=info.name,
            )
    bits = count * DTYPE_BITS[info.dtype]
    if bits > U64_MAX:
        raise ValidationOverflowError(
            path,
            f"tensor {info.name!r} ({info.dtype}, shape {list(info.shape)}) is more than 2**64 - 1 bits",
            tensor=info.name,
        )
    if bits % 8:
        raise MisalignedSliceError(
            path,
            f"tensor {info.name!r} ({info.dtype}, shape {list(info.shape)}) is {bits} bits, not whole bytes",
            tensor=info.name,
            expected=bits + (-bits % 8),
            actual=bits,
        )
    return bits // 8


def open_regular(path: Path, what: str) -> int:
    """A read-only descriptor of ``path`` if it is a regular file; CheckpointNotFoundError otherwise.

    Opened non-blocking and checked before any read, so a FIFO (which would block ``open`` until a writer comes)
    or a device file (``/dev/zero`` never ends) is refused at once; a name the system cannot take (too long, a
    loop of symlinks) is a one-line error, not a traceback.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointNotFoundError(exc.errno, f"cannot open the {what} {path} ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise CheckpointNotFoundError(errno.EINVAL, f"the {what} {path} is {kind}, not a regular file")
    return fd


def _read_header(path: Path, max_header: int) -> tuple[int, int, bytes]:
    """(header length, file size, header bytes), reading nothing past the header.

    The length prefix is 8 raw bytes of a file that may be anything (a symlink to a secret): messages say how it
    fails the format, never what it holds (``expected``/``actual`` keep the numbers for code)."""
    with os.fdopen(open_regular(path, "safetensors file"), "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        if file_size < PREFIX_SIZE:
            raise HeaderTooSmallError(path, f"file is {file_size} bytes long", expected=PREFIX_SIZE, actual=file_size)
        header_size = int.from_bytes(handle.read(PREFIX_SIZE), "little")
        if header_size > max_header:
            error = HeaderTooLargeError if header_size > MAX_HEADER_SIZE else JobHeaderTooLargeError
            raise error(
                path, f"the header length prefix is above the {max_header:,}-byte limit", expected=max_header,
                actual=header_size,
            )  # fmt: skip
        if PREFIX_SIZE + header_size > file_size:
            raise InvalidHeaderLengthError(
                path,
                f"the header length prefix points past the end of the file ({file_size - PREFIX_SIZE} bytes follow it)",
                expected=file_size - PREFIX_SIZE,
                actual=header_size,
            )
        raw = handle.read(header_size)
    if len(raw) != header_size:  # the file shrank while we read it
        raise InvalidHeaderLengthError(
            path,
            f"header length prefix is {header_size} but only {len(raw)} bytes could be read",
            expected=len(raw),
            actual=header_size,
        )
    return header_size, file_size, raw
