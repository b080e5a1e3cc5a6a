"""The benchmarks, by the question each answers: `python -m benchmarks` lists them.

    python -m benchmarks                 # what each measures, its run time here, the result file it writes
    python -m benchmarks tables [--check]  # the README's tables, made from the result files (tables.py)

Rooms: speed/ (how fast, against diffusers and Optimum), quality/ (does the edit work, what a fast
configuration costs), serving/ (the service under batching and load), install/ (what a user or a contributor
waits for), reliability/ (bad inputs through every command). Every benchmark writes JSON with the machine it ran
on (machine.py) into results/; a peer is measured in the same run and reported as a ratio.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Entry:
    module: str      # python -m benchmarks.<module>
    run_time: str    # on the 2-core CPU machines of this project (where a result records it, from there)
    writes: str      # under benchmarks/results/


CATALOG = (
    Entry("speed.bench_speed", "~2.5 h on the Intel Xeon: 18 configurations and 5 peers x 3 runs of 40-180 s SD "
          "1.5-shape edits, plus their exports and quantizations (~55 min once); 30 min for the OpenVINO subset of "
          "--name speed_sd15_openvino_cpu; 50 min for --rounds 3 of the 3 OpenVINO rows, both optimum-intel rows and the "
          "generation rows (--name speed_sd15_openvino_rounds_cpu)",
          "speed_sd15_cpu.{json,md}, speed_sd15_openvino_cpu.{json,md}, speed_sd15_openvino_rounds_cpu.{json,md}"),
    Entry("speed.bench_openvino_unet", "~9 min: 10 ways x (2 opens + 6 UNet calls of 2-10 s) on the SD 1.5 shape (its "
          "int8 engines from bench_speed's prepare: ~45 min once); 2 min for the 3 rows of --name "
          "openvino_unet_graphs_sd15_cpu", "openvino_unet_sd15_cpu.{json,md}, openvino_unet_graphs_sd15_cpu.{json,md}"),
    Entry("speed.bench_nncf", "~1 min on the embedded model; ~28 min on the SD 1.5 shape (in NNCF's own venv)",
          "nncf_int8_<name>_cpu.{json,md}"),
    Entry("speed.speed_report", "seconds (joins two result files)", "speed_report.{json,md,png}"),
    Entry("speed.bench_edit", "~15 min for --model sd15 (3 peers x 2 batches x 3 runs of 40-80 s); ~2 min for shapes; "
          "--model sdxl: its export (~15 min) and ~25 min at 512 px", "edit_<model>_<precision>_<device>.{json,md,png}"),
    Entry("speed.edit_peers", "(run by bench_edit and bench_speed, one child process per implementation)", "-"),
    Entry("speed.edit_report", "(the tables and plot of bench_edit)", "-"),
    Entry("speed.optimum_export", "~5 min, in Optimum's own venv", "(an Optimum export folder)"),
    Entry("speed.export_sd15_shape", "~4 min (export_total_s 220 s recorded on the AMD EPYC), ~10 GB of disk",
          "export_sd15_shape_<precision>.json"),
    Entry("speed.export_sdxl_shape", "~20 min, ~30 GB of disk (SDXL base's architecture, random weights)",
          "export_sdxl_shape_fp32.json"),
    Entry("speed.bench_open", "~1 min (6 opens that hash 4.3 GB, 6 that do not)", "open_sd15_cpu.json"),
    Entry("speed.bench_unet_call", "~10 min (one guided UNet call per engine dir, SD 1.5 shape)",
          "unet_call_sd15_cpu.json"),
    Entry("speed.bench_attention", "~1 min", "attention_cpu.json"),
    Entry("speed.session_memory", "~10 min (four session policies, SD 1.5 shape)", "session_memory_sd15_cpu.{json,md}"),
    Entry("speed.bench_reedit", "~2 min (shapes), ~15 min (sd15)", "reedit_<model>_cpu.json"),
    Entry("speed.bench_svd", "~1 min", "svd_<cpu>.json"),
    Entry("speed.bench_openvino_static", "~5 min on the SD 1.5 shape, fp32 on the AMD EPYC (2 compiles, 2 x 9 UNet "
          "calls of ~13 s)", "openvino_static_<cpu>_<precision>.{json,md}"),
    Entry("speed.bench_lora", "~12 min on the SD 1.5 shape, AMD EPYC (a fused export, ~4 min; the --lora-ready one "
          "the first time, ~4 min; 10 opens in fresh processes; 8 UNet calls)", "lora_sd15_cpu.{json,md}"),
    Entry("speed.bench_export_trace", "~9 min on the SD 1.5 shape, AMD EPYC (2 exports of ~3.5-4.5 min, each in a "
          "fresh process)", "export_trace_sd15_cpu.{json,md}"),
    Entry("speed.bench_io_binding", "~15 s on the embedded model (3 ways x 10 loops of 20 UNet calls; with a GPU 2 more, and 2 pipelines)",
          "io_binding_<device>.{json,md}"),
    Entry("quality.bench_edit_quality", "~14 min (830 s recorded: 4 pairs x 100 seeds + 20 renders)",
          "edit_quality.{json,md}, edit_quality_examples.png, edit_strength.png"),
    Entry("quality.bench_family_quality", "~10 min (2 models x 4 pairs x 100 seeds + 20 renders)",
          "family_quality.{json,md}, family_quality_examples_xl.png"),
    Entry("quality.edit_studies", "(run by bench_edit_quality: strength, transfer, uncaptioned images)", "-"),
    Entry("quality.scoring", "(the pairs and scores the quality benchmarks share)", "-"),
    Entry("quality.sweep_edit_knobs", "~30 min (the knob grid on fewer seeds)", "edit_knob_sweep.txt"),
    Entry("quality.speed_quality", "~20 min (each fast configuration on the embedded model)",
          "speed_quality_shapes.{json,md}"),
    Entry("quality.bench_shapes_model", "~2 min", "shapes_model.{json,md}, shapes_samples.png"),
    Entry("quality.bench_runtime", "~2 min", "runtime_cpu.{json,md}"),
    Entry("serving.bench_serve", "~2 min (1, 4, 16 concurrent clients; 13 s per round recorded)",
          "serve_batching.{json,png}"),
    Entry("serving.serve_load", "~1 min (96 requests; 7.6 s uvicorn, 9.9 s Ray recorded); --hostile ~5 min "
          "(2 x 200 requests and their references)", "serve_load_<backend>.json, serve_hostile.json"),
    Entry("serving.serving", "(starting and probing servers on loopback, for the benchmarks and tests)", "-"),
    Entry("install.bench_install", "~20 min with --make-test (fresh clones, empty caches)", "fresh_install_cpu.json"),
    Entry("install.bench_distribution", "~3 min (make dist, a fresh venv, the demo from the wheel)",
          "distribution_cpu.json"),
    Entry("reliability.reliability", "~5 min (the bad inputs through every command)", "reliability.{json,md}"),
)


def summary(module: str) -> str:
    """The first line of a benchmark's docstring (read without importing it)."""
    path = HERE / (module.replace(".", "/") + ".py")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def listing() -> str:
    out, room = [], None
    for e in CATALOG:
        here = e.module.split(".")[0]
        if here != room:
            out.append(f"\n{here}/")
            room = here
        if e.writes == "-":  # a part of the benchmarks beside it, not one to run
            out.append(f"  benchmarks/{e.module.replace('.', '/')}.py  {e.run_time}")
        else:
            out.append(f"  python -m benchmarks.{e.module}\n      {summary(e.module)}\n      run time: {e.run_time}"
                       f"\n      writes: {e.writes if e.writes.startswith('(') else 'results/' + e.writes}")
    return "\n".join(out).lstrip("\n")


def main(argv: list[str]) -> int:
    if argv[:1] == ["tables"]:
        from benchmarks import tables

        return tables.main(argv[1:])
    if argv and argv[0] not in ("-h", "--help"):
        print(f"python -m benchmarks: unknown command {argv[0]!r}; commands: (none) to list, tables [--check]",
              file=sys.stderr)
        return 2
    print(__doc__.split("\n\n")[0] + "\n")
    print(listing())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
