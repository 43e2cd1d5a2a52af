"""CUDA memory figures on a CPU machine: only the hardware boundary is faked (what torch's allocator, the driver and
NVML answer), the arithmetic is autotune's own."""

from __future__ import annotations

import types

import pytest
import torch

from autotune.measure import timing as measure

GB = 10**9


@pytest.fixture
def device(monkeypatch):
    """A 80 GB card as torch sees it (79.2 GB), 20 GB of torch's pool reserved, 0.5 GB of context, and another
    process holding 3 GB."""
    state = types.SimpleNamespace(reserved=20 * GB, peak=26 * GB, context=GB // 2, others=3 * GB, total=int(79.2 * GB),
                                  nvml=True)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: state.reserved)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: state.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(total_memory=state.total))
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda *a: (state.total - state.reserved - state.context - state.others, state.total))
    monkeypatch.setattr(measure, "_nvml_process_bytes",
                        lambda: state.reserved + state.context if state.nvml else None)
    monkeypatch.setattr(measure, "_context_seen", [])
    return state


def test_the_peak_counts_the_context_when_nvml_shows_the_process(device):
    assert measure.PeakMemory(cuda=True).peak() == device.peak + device.context


def test_the_peak_counts_the_context_when_nvml_hides_the_process(device):
    # Containers hide per-process figures: the reserved peak alone under-counts by the context.
    device.nvml = False
    peak = measure.PeakMemory(cuda=True).peak()
    assert peak >= device.peak + device.context
    # The device's used memory counts the other process too: an upper bound, never an under-count.
    assert peak == device.peak + device.context + device.others
    device.others = 0  # the other process ended: the smaller reading is kept from now on
    assert measure.PeakMemory(cuda=True).peak() == device.peak + device.context
    device.others = 5 * GB
    assert measure.PeakMemory(cuda=True).peak() == device.peak + device.context


def test_the_budget_fraction_is_of_torchs_total_and_leaves_room_for_the_context(device):
    device.reserved = 0
    fraction = measure.budget_fraction(6 * GB)
    # torch applies the fraction to its own total (less than NVML's), and the context lives outside the pool.
    assert fraction * device.total + device.context == pytest.approx(6 * GB)
    assert measure.budget_fraction(200 * GB) == 1.0 and measure.budget_fraction(GB // 4) == 0.0
