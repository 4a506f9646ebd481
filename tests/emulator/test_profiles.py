"""Profiles are data: every shipped file parses, carries sources, and bad files fail with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mali_hil.emulator.profile import (
    PROFILE_DIR,
    OomFailure,
    OomTrigger,
    available_profiles,
    load_profile,
    parse_profile_file,
    parse_size,
)
from mali_hil.errors import MaliHilError, ProfileError

GIB = 1 << 30


def test_the_four_required_gpus_ship() -> None:
    assert {"mali-t860", "mali-g52", "mali-g57", "mali-g610"} <= set(available_profiles())


@pytest.mark.parametrize("name", available_profiles())
def test_every_field_has_a_source_and_no_bf16(name: str) -> None:
    profile = load_profile(name)
    assert len(profile.sources) >= 20 and all(src.strip() for src in profile.sources.values())
    assert not any("bf16" in ext or "bfloat16" in ext for ext in profile.extensions)
    assert "cl_khr_fp16" in profile.extensions
    assert profile.unified_memory
    assert 0 < profile.max_alloc <= profile.global_mem <= profile.board_ram


def test_clinfo_values_from_public_dumps() -> None:
    g610 = load_profile("mali-g610")
    assert (g610.name, g610.vendor_id, g610.global_mem) == ("Mali-G610 MC6 r0p0", 0xA8670000, 7797280768)
    assert g610.max_alloc == g610.global_mem  # Valhall: one buffer may take all memory
    assert g610.oom_failure is OomFailure.OOM_KILL
    t860 = load_profile("mali-t860")
    assert (t860.vendor_id, t860.max_work_group_size, t860.compute_units) == (0x8602000, 256, 4)
    assert t860.max_alloc * 4 == pytest.approx(t860.global_mem, rel=1e-3)  # Midgard: a quarter
    g52 = load_profile("mali-g52")
    assert (g52.vendor_id, g52.max_work_group_size, g52.compute_units) == (0x72120000, 384, 2)


def test_what_triggers_each_failure() -> None:
    """libmali (G610, G57) caps nothing below RAM; the others also fail at their own device counter."""
    triggers = {key: load_profile(key).oom_trigger for key in available_profiles()}
    assert triggers["mali-g610"] is triggers["mali-g57"] is OomTrigger.RAM
    assert triggers["mali-g52"] is triggers["mali-t860"] is OomTrigger.BOTH
    assert not load_profile("mali-g610").is_estimated("oom_trigger")


def test_estimated_fields_say_so() -> None:
    g57 = load_profile("mali-g57")
    assert g57.is_estimated("global_mem") and g57.is_estimated("vendor_id")
    assert not load_profile("mali-g610").is_estimated("global_mem")


def test_ram_override_keeps_the_shares() -> None:
    base, small = load_profile("mali-g610"), load_profile("mali-g610:3GiB")
    assert small.board_ram == 3 * GIB
    assert small.global_mem / small.board_ram == pytest.approx(base.global_mem / base.board_ram, rel=1e-6)
    assert small.max_alloc == small.global_mem
    t860 = load_profile("mali-t860:2GiB")
    assert t860.max_alloc / t860.global_mem == pytest.approx(0.25, rel=1e-3)
    assert small.spec == "mali-g610:3GiB" and load_profile(small.spec) == small


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3GiB", 3 * GIB), ("512MiB", 512 << 20), ("2GB", 2 * 10**9), ("100", 100), ("1.5GiB", 3 * GIB // 2)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["3 gigs", "", "GiB", "-1GiB"])
def test_bad_sizes_name_the_format(text: str) -> None:
    with pytest.raises(ProfileError, match=r"e\.g\. '3GiB'"):
        parse_size(text)


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("mali-g999")
    assert isinstance(info.value, MaliHilError) and isinstance(info.value, ValueError)
    for name in available_profiles():
        assert name in str(info.value)


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = (PROFILE_DIR / "mali-g52.toml").read_text()
    assert old in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("compute_units = { value = 2,", 'compute_units = { value = "two",', "compute_units must be a int"),
        ('source = "ARM-software/ComputeLibrary issue 999" }\nvendor_id', 'source = "" }\nvendor_id', "needs a source"),
        ('"cl_khr_fp16",', '"cl_khr_fp16", "cl_khr_bf16",', "never a bf16 one"),
        ('failure = { value = "alloc-error"', 'failure = { value = "explode"', "is not one of"),
        ("max_alloc = { value = 502802432", "max_alloc = { value = 9999999999999", "max_alloc <= global_mem"),
        ("[device]", "[device\n", "not readable TOML"),
        ("unified_memory = { value = true", "unified_memory = { value = 1", "must be a bool"),
        ('trigger = { value = "both"', 'trigger = { value = "device"', "trigger 'device' is not one of"),
        ('trigger = { value = "both"', 'trigger = { value = "ram"', "failure must be oom-kill"),
        ('"cl_khr_fp16",', '"cl_khr_fp16", "cl_khr_fp64",', "lists cl_khr_fp64, but \\[device\\] fp64 is false"),
        ('svm = { value = "coarse-grain"', 'svm = { value = "yes"', "svm must be one of none, coarse-grain"),
        ("local_mem = { value = 32768", 'local_mem = { value = "32KiB"', "local_mem must be a int"),
    ],
)
def test_malformed_profile_names_file_and_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(ProfileError, match=message) as info:
        parse_profile_file(path)
    assert str(path) in str(info.value)


def test_a_users_profile_file_works_by_path(tmp_path: Path) -> None:
    path = tmp_path / "my-board.toml"
    path.write_text((PROFILE_DIR / "mali-g52.toml").read_text())
    profile = load_profile(f"{path}:1GiB")
    assert profile.key == "my-board" and profile.board_ram == GIB


def test_a_board_gives_a_job_what_it_leaves_not_its_nominal_ram(tmp_path: Path) -> None:
    """[memory]: the budget is MemAvailable at idle; resized, the board keeps its shares; swap and strict overcommit
    are refused with the reason; a section with a field missing is refused naming it."""
    from mali_hil.emulator.emulated_board import EmulatedBoard

    base = load_profile("mali-g610")
    assert base.memory is not None and base.job_budget() == base.memory.mem_available < base.board_ram
    small = load_profile("mali-g610:3GiB")
    assert small.job_budget() == int(3 * GIB * base.memory.mem_available / base.board_ram)
    assert EmulatedBoard.from_spec("mali-g610:3GiB").ram_budget == small.job_budget()
    assert EmulatedBoard.from_spec("mali-g52:1GiB").ram_budget == GIB  # no [memory]: the nominal RAM
    text = base.path.read_text() if base.path else ""
    swapping = tmp_path / "swapping.toml"
    swapping.write_text(text.replace("swap_total = { value = 0,", "swap_total = { value = 1073741824,")
                        .replace("zram_size = { value = 0,", "zram_size = { value = 1073741824,")
                        .replace('zram_algorithm = { value = "",', 'zram_algorithm = { value = "zstd",'))  # fmt: skip
    with pytest.raises(ProfileError, match=r"swaps to zram \(1.00 GiB, zstd\).*not modelled"):
        EmulatedBoard.from_spec(str(swapping))
    strict = tmp_path / "strict.toml"
    strict.write_text(text.replace("overcommit_memory = { value = 0,", "overcommit_memory = { value = 2,"))
    with pytest.raises(ProfileError, match="strict overcommit"):
        load_profile(str(strict)).job_budget()
    partial = tmp_path / "partial.toml"
    partial.write_text("\n".join(line for line in text.splitlines() if not line.startswith("cma_total")))
    with pytest.raises(ProfileError, match=r"\[memory\] lacks cma_total"):
        load_profile(str(partial))
