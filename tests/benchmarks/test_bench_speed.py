"""bench_speed's interleaved rounds (benchmarks/speed/bench_speed.py --rounds): the order the rows run in and how a
row's rounds are joined; the children are replaced by a recorder, no model runs."""

from __future__ import annotations

from benchmarks.speed import bench_speed


def test_rounds_alternate_their_order_and_a_row_is_its_median_round(monkeypatch):
    ran, seconds = [], {"A": [10.0, 30.0, 20.0], "B": [40.0, 50.0, 60.0]}

    def child(spec):
        ran.append(spec["label"])
        s = seconds[spec["label"]][sum(1 for label in ran if label == spec["label"]) - 1]
        return {"impl": "x", "seconds_median": s, "invert_step_s": s / 10, "guided_step_s": s / 5, "load_s": 1.0,
                "peak_rss_gib": s / 10, "out": spec["out"]}

    monkeypatch.setattr(bench_speed, "run_child", child)
    rows = bench_speed.run_rounds([{"label": "A"}, {"label": "B"}], 3, "/tmp/speed-{}.npy")
    assert ran == ["A", "B", "B", "A", "A", "B"]
    a, b = rows
    assert a["seconds_median"] == 20.0 and a["guided_step_s"] == 4.0 and a["peak_rss_gib"] == 3.0
    assert a["seconds_rounds"] == [10.0, 30.0, 20.0] and a["out"] == "/tmp/speed-0.npy"
    assert bench_speed.paired(b, a) == [4.0, 50.0 / 30.0, 3.0]
    assert bench_speed.rounds_text(bench_speed.paired(b, a), "{:.2f}x") == "4.00x, 1.67x, 3.00x (min 1.67x)"
    ran.clear()
    single = bench_speed.run_rounds([{"label": "A"}], 1, "/tmp/x-{}.npy")
    assert "seconds_rounds" not in single[0] and bench_speed.paired(single[0], single[0]) == []
