"""Thread choice: `train.threads=auto` counts the cores idle now (a short sample of /proc/stat), not the
1-minute load average, which still remembers a pip install that ended a moment ago."""
import os
from pathlib import Path

import pytest

from kdistill.base import hardware


def _stat(*cpus: tuple[int, int]) -> str:
    """/proc/stat text for CPUs given as (busy, idle) jiffies: the summed `cpu` line, then one per CPU."""
    def line(name, busy, idle):  # user nice system idle iowait irq softirq steal guest guest_nice
        return f"{name} {busy} 0 0 {idle} 0 0 0 0 0 0"

    total = line("cpu ", sum(b for b, _ in cpus), sum(i for _, i in cpus))
    return "\n".join([total, *(line(f"cpu{n}", b, i) for n, (b, i) in enumerate(cpus)), "intr 1 2 3", ""])


def _sampled(tmp_path, before: str, after: str) -> tuple[str, callable]:
    """A fake /proc/stat that reads `before`, then `after` once the sample's interval has passed."""
    stat = tmp_path / "stat"
    stat.write_text(before)
    return str(stat), lambda seconds: stat.write_text(after)


@pytest.fixture
def two_cores_after_an_install(monkeypatch):
    """2 cores whose 1-minute load average still reads 0.9 (a pip install ended a moment ago)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.5, 0.2))


@pytest.mark.parametrize("busy, idle", [((0, 0), 2), ((100, 0), 1), ((50, 50), 1), ((100, 100), 1), ((5, 0), 2)])
def test_idle_cores_are_those_the_sample_finds_idle(tmp_path, two_cores_after_an_install, busy, idle):
    """100 jiffies pass per CPU during the sample; `busy` of them were busy on each CPU."""
    before = _stat((1000, 5000), (2000, 4000))
    after = _stat((1000 + busy[0], 5100 - busy[0]), (2000 + busy[1], 4100 - busy[1]))
    stat, sleep = _sampled(tmp_path, before, after)
    assert hardware.idle_cores(stat, interval=0.25, sleep=sleep) == idle


def test_a_load_average_that_remembers_an_install_does_not_cost_a_core(tmp_path, two_cores_after_an_install):
    stat, sleep = _sampled(tmp_path, _stat((1000, 5000), (2000, 4000)), _stat((1002, 5098), (2001, 4099)))
    assert hardware.idle_cores(stat, sleep=sleep) == 2  # the load average alone gives round(2 - 0.9) = 1


def test_the_sample_waits_its_interval(tmp_path):
    stat, rewrite = _sampled(tmp_path, _stat((0, 0)), _stat((10, 90)))
    waited = []
    hardware.busy_cores(stat, interval=0.3, sleep=lambda s: (waited.append(s), rewrite(s)))
    assert waited == [0.3]
    assert hardware.busy_cores(stat, interval=0.3, sleep=lambda s: None) is None  # nothing moved: no answer


@pytest.mark.parametrize("content", [None, "", "cpu  x y z\n", "intr 1 2\n"])
def test_without_a_readable_proc_stat_the_load_average_decides(tmp_path, two_cores_after_an_install, content):
    stat = tmp_path / "stat"
    if content is not None:
        stat.write_text(content)
    assert hardware.busy_cores(stat, sleep=lambda s: None) is None
    assert hardware.idle_cores(stat, sleep=lambda s: None) == 1  # round(2 - 0.9)


def test_the_real_proc_stat_gives_a_core_count_in_range():
    if not os.path.exists(hardware.PROC_STAT):
        pytest.skip("no /proc/stat on this system")
    cpus = sum(1 for line in Path(hardware.PROC_STAT).read_text().splitlines() if line[:3] == "cpu") - 1
    busy = hardware.busy_cores(interval=0.05)
    assert busy is None or 0.0 <= busy <= cpus
    assert 1 <= hardware.idle_cores(interval=0.05) <= (os.cpu_count() or 1)
