"""Errors raised while reading, checking or writing safetensors checkpoints.

Every check of the safetensors format has its own class, so a test (or a user) can tell *which* rule a
file breaks without parsing messages. The classes follow the reference reader (huggingface/safetensors,
Rust) in the order it runs its checks; each docstring names the reference reader's error variant.

All of them are ``CheckpointError``: a ``MaliHilError`` and a ``ValueError`` (the file's content is wrong).
The message always names the file, the bad value and what a valid file needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from mali_hil.errors import MaliHilError


class CheckpointError(MaliHilError, ValueError):
    """A checkpoint file (or shard index) breaks a rule of the safetensors format.

    Fields: ``path`` (the offending file), ``problem`` (what is wrong, naming the bad value), and where
    they apply ``tensor`` (the tensor or JSON key concerned), ``expected`` and ``actual`` (numbers).
    """

    #: Name of the matching error in the reference reader, or None when it has no such check.
    reference: ClassVar[str | None] = None
    #: What a valid file needs instead; appended to every message.
    need: ClassVar[str] = "a valid safetensors file"

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        tensor: str | None = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.problem = problem
        self.tensor = tensor
        self.expected = expected
        self.actual = actual
        super().__init__(f"{self.path}: {problem}; {self.need}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields do not survive the default exception pickling; workers send errors back.
        return (type(self), (self.path, self.problem), dict(self.__dict__))


# --- the 8-byte length prefix ------------------------------------------------------------------------------


class HeaderTooSmallError(CheckpointError):
    """The file is shorter than the 8-byte header-length prefix (reference: ``HeaderTooSmall``)."""

    reference = "HeaderTooSmall"
    need = "a safetensors file starts with an 8-byte little-endian header length"


class HeaderTooLargeError(CheckpointError):
    """The header length exceeds 100,000,000 bytes (reference: ``HeaderTooLarge``)."""

    reference = "HeaderTooLarge"
    need = "the header length prefix must be at most 100,000,000 bytes"


class JobHeaderTooLargeError(HeaderTooLargeError):
    """The header is within the format's limit but above what a load job takes (``JOB_HEADER_LIMIT``): parsing
    it would cost hundreds of MiB of the board's RAM before any loader runs."""

    reference = None
    need = (
        "a load job takes headers of at most 4 MiB (4,194,304 bytes); `mali-hil checkpoint check` applies the"
        " format's own limit"
    )


class InvalidHeaderLengthError(CheckpointError):
    """8 + header length runs past the end of the file (reference: ``InvalidHeaderLength``)."""

    reference = "InvalidHeaderLength"
    need = "the 8-byte prefix plus the header length must fit inside the file"


# --- the JSON header ----------------------------------------------------------------------------------------


class InvalidHeaderError(CheckpointError):
    """The header bytes are not valid UTF-8 (reference: ``InvalidHeader``)."""

    reference = "InvalidHeader"
    need = "the header must be UTF-8 encoded JSON"


class InvalidHeaderDeserializationError(CheckpointError):
    """The header is not JSON of the right shape (reference: ``InvalidHeaderDeserialization``).

    The right shape: one JSON object mapping tensor names to ``{"dtype", "shape", "data_offsets"}``
    objects, plus an optional ``"__metadata__"`` string-to-string map.
    """

    reference = "InvalidHeaderDeserialization"
    need = (
        'the header must be a JSON object of {"dtype": str, "shape": [uint64...], "data_offsets": [uint64, uint64]}'
        ' entries and an optional "__metadata__" string map'
    )


class DuplicateKeyError(InvalidHeaderDeserializationError):
    """A JSON object in the header repeats a key.

    Stricter than the reference reader, which keeps the last of repeated tensor names (and repeated
    ``__metadata__`` entries) silently; Python readers such as tinygrad's ``safe_load`` do the same, so
    which tensor a loader sees would depend on the parser. Repeated fields inside one tensor entry are
    refused by the reference reader too (as ``InvalidHeaderDeserialization``).

    Keys repeated inside objects the reader ignores (the value of an unknown field) are refused as well, where
    the reference reader does not look: one rule for the whole header, as the format's description states it
    ("duplicate keys are disallowed"); no writer produces such a header, and a parser that keeps the first value
    and one that keeps the last would read it differently.
    """

    reference = "InvalidHeaderDeserialization"
    need = "every key of every JSON object in the header must be unique"


class UnknownDtypeError(InvalidHeaderDeserializationError):
    """A tensor's dtype is not a safetensors dtype (the reference reader reports it as
    ``InvalidHeaderDeserialization``)."""

    reference = "InvalidHeaderDeserialization"
    need = "dtype must be one of the safetensors dtype names (e.g. BF16, F16, F32)"


class InvalidMetadataError(InvalidHeaderDeserializationError):
    """``__metadata__`` is not a string-to-string map (the reference reader reports it as
    ``InvalidHeaderDeserialization``)."""

    reference = "InvalidHeaderDeserialization"
    need = '"__metadata__" must be null or a JSON object whose values are all strings'


# --- offsets and sizes --------------------------------------------------------------------------------------


class InvalidOffsetError(CheckpointError):
    """Tensors sorted by offsets do not start at 0 and follow each other without gap or overlap
    (reference: ``InvalidOffset``)."""

    reference = "InvalidOffset"
    need = "tensors sorted by data_offsets must start at 0 and each start where the previous one ends"


class ValidationOverflowError(CheckpointError):
    """The element count or bit size of a tensor overflows 64 bits (reference: ``ValidationOverflow``)."""

    reference = "ValidationOverflow"
    need = "a tensor's element count times its dtype's bit size must fit in 64 bits"


class MisalignedSliceError(CheckpointError):
    """A sub-byte dtype's tensor does not fill a whole number of bytes (reference: ``MisalignedSlice``)."""

    reference = "MisalignedSlice"
    need = "a tensor's element count times its dtype's bit size must be a multiple of 8"


class TensorInvalidInfoError(CheckpointError):
    """A tensor's byte range does not match its shape and dtype (reference: ``TensorInvalidInfo``)."""

    reference = "TensorInvalidInfo"
    need = "data_offsets[1] - data_offsets[0] must equal the element count times the dtype's size"


class MetadataIncompleteBufferError(CheckpointError):
    """The last tensor does not end exactly at the end of the file (reference: ``MetadataIncompleteBuffer``)."""

    reference = "MetadataIncompleteBuffer"
    need = "the tensors must cover the byte buffer exactly, up to the end of the file"


# --- sharded checkpoints (model.safetensors.index.json); the reference reader has no index checks -----------


class ShardIndexError(CheckpointError):
    """Root of the errors in a sharded checkpoint's index file."""

    need = 'a shard index is {"metadata": {...}, "weight_map": {tensor name: shard file name}}'


class IndexFormatError(ShardIndexError):
    """The index file is not JSON, or not of the Hugging Face index shape."""

    need = (
        'a shard index must be a JSON object with a "weight_map" object mapping each tensor name to a shard'
        " file name relative to the index's folder"
    )


class ShardMissingError(ShardIndexError):
    """The index names a shard file that does not exist."""

    need = "every shard file named in the index's weight_map must exist next to the index"


class ShardOutsideError(ShardIndexError):
    """A shard named in the index is a symlink that leads outside the index's folder."""

    need = (
        "shards must be files in the index's folder (links may point within it, or within the folder the index"
        " itself links into, as in a Hugging Face cache)"
    )


class IndexTensorMissingError(ShardIndexError):
    """The index maps a tensor to a shard that does not contain it."""

    need = "every tensor of the weight_map must be stored in the shard file the index names for it"


class UnindexedTensorError(ShardIndexError):
    """A shard holds a tensor that the index does not map to that shard."""

    need = "every tensor stored in a shard must be listed in the index's weight_map with that shard"


# --- writing ------------------------------------------------------------------------------------------------


class CheckpointWriteError(CheckpointError):
    """A checkpoint cannot be written as asked (bad tensor spec, or a fill gave the wrong number of bytes)."""

    need = (
        "each tensor needs a unique name, a known dtype, non-negative dims and a fill giving exactly its size in"
        " bytes; one file goes to a .safetensors path, shards go into a folder"
    )


# --- not content errors -------------------------------------------------------------------------------------


class CheckpointNotFoundError(MaliHilError, FileNotFoundError):
    """The checkpoint path does not exist or is not a file we can check (a usage error, not a bad file)."""


class ModelError(MaliHilError, ValueError):
    """An unknown model name, or a scale / layer count / node range that cannot shape a model."""


class FillError(MaliHilError, ValueError):
    """An unknown fill kind, or a dtype the fill cannot produce values for."""


#: The per-file format checks, in the order the reference reader runs them (the test suite breaks each one).
FORMAT_ERRORS: tuple[type[CheckpointError], ...] = (
    HeaderTooSmallError,
    HeaderTooLargeError,
    InvalidHeaderLengthError,
    InvalidHeaderError,
    InvalidHeaderDeserializationError,
    InvalidOffsetError,
    ValidationOverflowError,
    MisalignedSliceError,
    TensorInvalidInfoError,
    MetadataIncompleteBufferError,
    DuplicateKeyError,
    UnknownDtypeError,
    InvalidMetadataError,
)
