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


def test_generation_runs_the_exact_path_the_fastest_openvino_row_and_the_fastest_row_once_each(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from svdedit.runtime.editing import avi

    monkeypatch.setattr(avi.Attribute, "load", lambda path: SimpleNamespace(knobs=SimpleNamespace(steps=10, guidance=3.0)))
    jobs = []
    monkeypatch.setattr(bench_speed, "run_rounds", lambda js, rounds, out: jobs.extend(js) or [])
    by_label = {c[0]: c for c in bench_speed.configs()}
    ov_n3 = next(label for label in by_label if label.startswith("OpenVINO int8") and label.endswith("N=3"))
    rows = [{"label": "exact (fp32)", "impl": "svdedit (onnxruntime)", "seconds_median": 70.0},
            {"label": "int8 static + step cache N=3", "impl": "svdedit (onnxruntime)", "seconds_median": 40.0},
            {"label": ov_n3, "impl": "svdedit (OpenVINO)", "seconds_median": 50.0},
            {"label": "optimum-intel (OpenVINO)", "impl": "optimum-intel (OpenVINO)", "seconds_median": 30.0}]
    args = SimpleNamespace(genai_python="/genai/python", optimum_intel_python="/ovi/python", rounds=1)
    bench_speed.generation_rows(args, {"attr": "a.safetensors"}, rows, tmp_path, [r["label"] for r in rows[:3]])
    assert [j["label"] for j in jobs] == ["svdedit generate, exact (fp32)", f"svdedit generate, {ov_n3}",
                                          "svdedit generate, int8 static + step cache N=3",
                                          "OpenVINO GenAI Text2ImagePipeline"]
    assert [j["provider"] for j in jobs[:3]] == ["cpu", "openvino", "cpu"] and jobs[-1]["python"] == "/genai/python"
    jobs.clear()  # the fastest row is the fastest OpenVINO row: it runs once
    bench_speed.generation_rows(args, {"attr": "a.safetensors"}, rows[2:], tmp_path, [rows[2]["label"]])
    assert [j["label"] for j in jobs] == [f"svdedit generate, {ov_n3}", "OpenVINO GenAI Text2ImagePipeline"]
