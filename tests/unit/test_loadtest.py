"""The load generator's pure parts (loadtest/soak.py): schedule, percentiles, lag, /proc, report."""

from __future__ import annotations

import json

import pytest

from framebus.loadtest import soak


def test_send_offsets_are_absolute_and_stop_before_the_end():
    assert soak.send_offsets(2, 3) == [0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert len(soak.send_offsets(0.5, 20)) == 10
    assert soak.send_offsets(1, 2.5) == [0, 1, 2]
    assert soak.send_offsets(0.3, 10) == pytest.approx([0, 10 / 3, 20 / 3])
    assert len(soak.send_offsets(10, 600)) == 6000  # no float drift at the end of a 10-minute soak
    assert soak.send_offsets(0, 10) == [] and soak.send_offsets(1, 0) == []


def test_percentiles():
    p = soak.percentiles(range(1, 101))
    assert p["n"] == 100 and p["min"] == 1 and p["max"] == 100
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1) and p["p99"] == pytest.approx(99.01)
    assert soak.percentiles([3.0, None, 1.0])["p50"] == 2.0  # None (not measured) is left out
    empty = soak.percentiles([])
    assert empty["n"] == 0 and empty["p99"] is None and empty["max"] is None


def test_group_lag_sums_end_minus_committed():
    end = {0: 10, 1: 5, 2: 7}
    begin = {0: 0, 1: 2, 2: 0}
    assert soak.group_lag(end, {0: 4, 1: 5, 2: 7}, begin, group_exists=True) == 6
    # a partition without a commit counts from its beginning offset (what is still there is unconsumed)
    assert soak.group_lag(end, {0: 4, 1: -1}, begin, group_exists=True) == 6 + 3 + 7
    assert soak.group_lag(end, {}, begin, group_exists=True) == 10 + 3 + 7
    # a missing group is unknown, not zero and not everything
    assert soak.group_lag(end, {}, begin, group_exists=False) is None
    assert soak.group_lag(end, {0: -1}, begin, group_exists=False) is None
    # commits alone prove the group (list_consumer_groups may have failed)
    assert soak.group_lag(end, {0: 10}, begin, group_exists=False) == 0 + 3 + 7
    # a commit ahead of a stale end offset is no negative lag
    assert soak.group_lag({0: 3}, {0: 5}, {0: 0}, group_exists=True) == 0
    # commits on partitions the topic no longer reports do not count
    assert soak.group_lag({0: 3}, {0: 3, 9: 0}, {}, group_exists=True) == 0


def test_stage_groups_one_group_per_stage_with_the_prefix():
    groups = soak.stage_groups("fb", lambda name: f"pre.{name}")
    assert list(groups) == list(soak.STAGES)
    assert groups["ingest"] == ("fb.ingest", "pre.framebus.ingest")
    assert groups["decode"] == ("fb.decode", "pre.framebus.internal.decode")
    assert {groups[s][1] for s in ("embed", "caption", "moderate")} == {"pre.framebus.internal.frames"}
    assert len({g for g, _ in groups.values()}) == 7
    assert groups["index"][1] == "pre.framebus.internal.analysis"
    assert groups["publish"][1] == "pre.framebus.internal.progress"
    assert soak.stage_groups("fb", str, "{app_id}")["embed"][0] == "fb"


def test_parse_proc_files():
    assert soak.parse_stat("1234 (python3) S 77 1234 1 0 -1") == (1234, "python3", 77)
    assert soak.parse_stat("9 (a) b) (c) R 8 9 9") == (9, "a) b) (c", 8)  # comm may hold ') '
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nRssAnon:\t 1 kB\n"
    assert soak.parse_vmrss_kb(status) == 123456
    assert soak.parse_vmrss_kb("Name:\tkthreadd\nState:\tS\n") is None


def test_descendants_walks_the_tree_only_below_the_root():
    ppids = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert soak.descendants(ppids, 10) == [10, 11, 12, 13]
    assert soak.descendants(ppids, 13) == [13]
    assert soak.descendants({5: 6, 6: 5}, 5) == [5, 6]  # a (bogus) cycle ends


def _fake_proc(root, procs):
    for pid, (comm, ppid, rss, cmdline) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1\n")
        (d / "status").write_text(f"Name:\t{comm}\n" + (f"VmRSS:\t{rss} kB\n" if rss is not None else ""))
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    (root / "self").mkdir()  # non-numeric entries are skipped
    return root


def test_tree_rss_sums_the_stack_and_its_descendants(tmp_path):
    proc = _fake_proc(
        tmp_path / "proc",
        {
            1: ("init", 0, 10, ["/sbin/init"]),
            100: ("python", 1, 1000, ["/v/bin/python", "-m", "framebus.streams.cli", "up", "--http", "x"]),
            101: ("tansu", 100, 200, ["tansu"]),
            102: ("python", 100, 300, ["/v/bin/python", "-c", "from multiprocessing.spawn import spawn_main"]),
            103: ("python", 102, 50, ["/v/bin/python"]),
            104: ("zombie", 100, None, []),
            200: ("python", 1, 5000, ["/v/bin/framebus", "demo"]),
        },
    )
    rss = soak.tree_rss(100, proc)
    assert rss["total_kb"] == 1000 + 200 + 300 + 50 and rss["main_kb"] == 1000
    assert set(rss["processes"]) == {"100:python", "101:tansu", "102:python", "103:python"}
    assert soak.tree_rss(999, proc) is None
    assert soak.find_up_pids(proc) == [100]


def test_is_up_command():
    assert soak.is_up_command(["/x/.venv/bin/framebus", "up", "--models", "tiny"])
    assert soak.is_up_command(["python", "-m", "framebus.streams.cli", "up"])
    assert not soak.is_up_command(["python", "-m", "framebus.streams.cli", "worker"])
    assert not soak.is_up_command(["framebus", "loadtest", "up"])
    assert not soak.is_up_command(["vim", "up"])


def test_dir_bytes(tmp_path):
    assert soak.dir_bytes(tmp_path / "blobs") is None
    (tmp_path / "blobs" / "frames" / "a").mkdir(parents=True)
    (tmp_path / "blobs" / "frames" / "a" / "1.jpg").write_bytes(b"x" * 1000)
    (tmp_path / "blobs" / "t.jpg").write_bytes(b"x" * 24)
    assert soak.dir_bytes(tmp_path / "blobs") == 1024


def test_growth_over_a_window():
    ts = [0, 10, 20, 30, 40, 50, 60]
    ys = [100, 500, 100, 110, 120, 130, 140]  # a spike early, then 1 per second
    g = soak.growth(ts, ys, 30, 60)
    assert g["delta"] == pytest.approx(30) and g["slope_per_min"] == pytest.approx(60)
    assert soak.growth(ts, [None] * 7, 30, 60) == {"delta": None, "slope_per_min": None}
    assert soak.growth([0, 40], [1, None], 30, 60)["delta"] is None


def _run() -> soak.Run:
    V = soak.VideoRecord
    run = soak.Run(duration_s=20.0, groups=soak.stage_groups("framebus", str))
    run.videos = [
        V("a", 0, 0.0, sent_at=0.0, metadata_at=4.0, status="ok", alert_at=2.0, documents=1),
        V("b", 1, 5.0, sent_at=5.1, metadata_at=11.1, status="ok", documents=2),
        V("c", 0, 10.0, sent_at=10.0, metadata_at=13.0, status="failed", error_code="ingest.not_a_video", documents=1),
        V("d", 1, 15.0, sent_at=15.0),  # never got its metadata
        V("e", 0, 19.0, sent_at=19.0, send_error="KafkaTimeoutError()"),
    ]
    run.searches = [soak.SearchRecord(1.0, 0.2, 200), soak.SearchRecord(2.0, None, None, "timeout")]

    def lag(n):
        return {s: (None if s == "publish" else n) for s in soak.STAGES}

    def rss(total):
        return {"total_kb": total * 1024, "main_kb": 512 * 1024, "processes": {"1:python": total * 1024}}

    run.samples = [
        {"t": 0.0, "lag": lag(0), "rss": rss(1000), "blob_bytes": None},
        {"t": 10.0, "lag": lag(5), "rss": rss(1200), "blob_bytes": 2 * soak.MB},
        {"t": 20.0, "lag": lag(1), "rss": rss(1250), "blob_bytes": soak.MB},
    ]
    run.ended_at = 200.0
    return run


def test_summarize_and_report():
    s = soak.summarize(_run())
    v = s["videos"]
    assert (v["scheduled"], v["sent"], v["send_failed"], v["documents"], v["ok"], v["failed"]) == (5, 4, 1, 3, 2, 1)
    assert v["missing"] == ["d"] and v["failed_codes"] == {"ingest.not_a_video": 1}
    assert v["duplicate_documents"] == 1 and v["alerted"] == 1
    assert s["latency_s"]["metadata_ok"]["n"] == 2 and s["latency_s"]["metadata_ok"]["max"] == pytest.approx(6.0)
    assert s["latency_s"]["metadata_failed"]["p50"] == pytest.approx(3.0)
    assert s["latency_s"]["alert"]["n"] == 1 and s["latency_s"]["alert"]["max"] == 2.0
    assert s["throughput"]["completed_vps"] == pytest.approx(3 / 13)
    assert s["throughput"]["second_half_vps"] == pytest.approx(2 / 10)  # b and c finished in [10, 20]
    assert s["schedule_slip_s"]["max"] == pytest.approx(0.1)
    assert s["search"] == {"sent": 2, "ok": 1, "errors": 1, "latency_s": soak.percentiles([0.2])}
    assert s["lag"]["decode"]["max"] == 5 and s["lag"]["decode"]["final"] == 1
    assert s["lag"]["decode"]["group"] == "framebus.decode"
    assert s["lag"]["publish"]["max"] is None and s["lag"]["publish"]["known_samples"] == 0
    assert (s["rss_mb"]["min"], s["rss_mb"]["max"], s["rss_mb"]["final"]) == (1000, 1250, 1250)
    assert s["rss_mb"]["second_half_growth"]["delta"] == pytest.approx(50)
    assert s["blob_mb"] == {"max": 2.0, "final": 1.0}
    assert not s["passed"]  # d has no metadata, e was not sent
    assert [c["name"] for c in s["checks"] if not c["ok"]] == ["published", "metadata for every video"]
    json.dumps(s)  # the report is JSON as it is

    text = soak.format_report(s)
    assert "ingest -> metadata" in text and "ingest -> first alert" in text
    assert "(group unknown)" in text and "framebus.decode" in text
    assert "[FAIL] metadata for every video" in text and "no metadata for: d" in text


def test_bounds_pass_and_fail():
    run = _run()
    run.videos = run.videos[:3]  # everything sent got its metadata
    assert soak.summarize(run)["passed"]
    loose = soak.Bounds(max_rss_mb=2000, max_rss_growth_mb=100, max_lag=10, max_blob_mb=5)
    s = soak.summarize(run, loose)
    assert s["passed"] and len(s["checks"]) == 6
    tight = soak.Bounds(max_rss_mb=1200, max_rss_growth_mb=10, max_lag=4, max_blob_mb=1)
    s = soak.summarize(run, tight)
    failed = [c["name"] for c in s["checks"] if not c["ok"]]
    assert failed == ["RSS max", "RSS growth over the second half", "lag max (any stage)", "blob store max"]
    assert not s["passed"]
    # a bound on what was not measured fails: an unmeasured soak is no passed soak
    run.samples = [{"t": 0.0, "lag": dict.fromkeys(soak.STAGES), "rss": None, "blob_bytes": None}]
    s = soak.summarize(run, loose)
    assert not s["passed"] and all("unmeasured" in c["detail"] for c in s["checks"][2:])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    assert soak.plot(_run(), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_args():
    a = soak.parse_args(["--rate", "0.5", "--duration", "20", "--width", "64", "--height", "48", "--start-stack"])
    assert a.rate == 0.5 and a.duration == 20 and (a.width, a.height) == (64, 48) and a.start_stack
    for bad in (
        ["--rate", "0"],
        ["--distinct", "0"],
        ["--start-stack", "--broker", "x:1"],
        ["--group-template", "{x}"],
    ):
        with pytest.raises(SystemExit):
            soak.parse_args(bad)


def test_clips_are_generated_once(tmp_path):
    clips = soak.make_clips(tmp_path / "media", 2, 1.0, 64, 48, 12)
    assert [p.name for p in clips] == ["clip0000.mp4", "clip0001.mp4"] and all(p.stat().st_size > 0 for p in clips)
    stamps = [p.stat().st_mtime_ns for p in clips]
    assert soak.make_clips(tmp_path / "media", 2, 1.0, 64, 48, 12) == clips
    assert [p.stat().st_mtime_ns for p in clips] == stamps  # reused, not rendered again
    assert [len(soak.clip_plan(k, 5.0)) for k in range(2)] == [2, 2]
    assert sum(s.duration_s for s in soak.clip_plan(0, 5.0)) == pytest.approx(5.0)


def test_the_api_key_stays_out_of_the_report():
    argv = ["framebus", "loadtest", "--api-key", "s3cret", "--rate", "1", "--api-key=other"]
    assert soak.redact(argv) == ["framebus", "loadtest", "--api-key", "***", "--rate", "1", "--api-key=***"]
