"""Property 2, dtypes: every kind of tensor a real checkpoint holds comes back as stored, by name, dtype, shape and
bytes: integers of every width and sign, BOOL masks, 0-d scalars, empty tensors, beside the floats each variant
converts (or, for a variant that keeps floats as stored, keeps). A dtype no variant loads (F64: a Mali has no
fp64; F8) is refused, by name, before the device sees anything.

The checkpoint is mali_hil.properties.every_kind, written by the safetensors reference library; the oracle is
the reference reader (conftest ``check_oracle``: digests of dtype, shape and bytes). The worker's contract check
refuses a tensor returned in another dtype or shape than the rule of ``loaders.base.final_dtype`` before any
digest is taken; the oracle catches what it cannot see (a tensor dropped, other bytes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.harness.records.results import Status

from . import every_kind
from .conftest import check_oracle, failed

pytestmark = pytest.mark.mali_hil_property("dtypes")


def test_every_kind_of_tensor(load, loader_name: str, every_kind_checkpoint: Path) -> None:
    """The whole file: catches an integer narrowed (I64 position ids as int32), a 0-d scalar reshaped to (1,),
    an empty tensor dropped, a BOOL mask converted like a float, a sign or high bit lost in any integer width."""
    check_oracle(load(every_kind_checkpoint, values=True), every_kind_checkpoint)


def test_a_middle_node_meets_every_kind(load, loader_name: str, every_kind_checkpoint: Path) -> None:
    """Node 1 of 3 (layers 1-1): exactly layer 1's tensors of every kind, nothing of the others or outside them.
    Catches a shard rule that keys on float tensors only, or drops a layer's scalars and empty tensors."""
    keys = [name for name in every_kind.tensors() if name.startswith("model.layers.1.")]
    check_oracle(load(every_kind_checkpoint, shard=(1, 1), values=True), every_kind_checkpoint, keys)


@pytest.mark.parametrize("dtype", every_kind.REFUSED)
def test_unloadable_dtype_is_refused_by_name(load, loader_name: str, tmp_path: Path, dtype: str) -> None:
    """A valid file with one tensor no variant loads: the job ends ``error`` with a LoaderError naming the dtype
    and the tensor, never ``ok`` with the tensor converted, dropped or reinterpreted."""
    path = every_kind.write_refused(tmp_path / f"{dtype}.safetensors", dtype)
    result = load(path)
    assert (result.status, result.error_type) == (Status.ERROR, "LoaderError"), failed(result)
    assert dtype in (result.error_message or "") and f"{dtype.lower()}'" in (result.error_message or ""), failed(
        result
    )
