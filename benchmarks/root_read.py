"""Reading speed of model inputs from ROOT ntuples through a spec's ``data`` mapping, in events per second.

Two NanoAOD-like ntuples of the zoo's synthetic jets, written into a temporary folder exactly as
``hepdeploy zoo export NAME --root`` writes them (:mod:`hepdeploy.model_zoo.root_export`):

* flat: the jet MLP's 16 scalar branches stacked into ``input_1`` [events, 16] (plus one-hot labels
  and Jet_pt/Jet_eta);
* jagged: ParticleNet's ``PFCands_*`` (20 branches, counts nPFCands) and ``SV_*`` (11, counts nSV)
  padded into six inputs ([events, 20, 50] ...), raw (the mapping alone, no preprocess.json) and
  through the preprocess.json (cmssw and weaver conventions).

Each case times :func:`hepdeploy.data.read_root_events` on the whole file (inputs, labels and
variables), median of ``--repeats`` runs after one untimed warm-up read (file cache warm).

    .venv/bin/python benchmarks/root_read.py [--flat 200000] [--jagged 50000] [--repeats 3] \\
        [--out benchmarks/results/root_read.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any


def _tile(arrays: dict[str, Any], n: int) -> dict[str, Any]:
    """``n`` events from a smaller generated set (repeated): the reading cost does not depend on the values."""
    import numpy as np

    have = len(next(iter(arrays.values())))
    index = np.arange(n) % have
    return {k: v[index] for k, v in arrays.items()}


def write_files(folder: Path, n_flat: int, n_jagged: int) -> dict[str, Any]:
    """Both ntuples, their preprocess.json and the specs that read them."""
    import json

    from hepdeploy.model_zoo import get_network
    from hepdeploy.model_zoo.export import spec_dict
    from hepdeploy.model_zoo.root_export import ROOT_TREE, data_block, ntuple_branches, preprocess_json, root_layout
    from hepdeploy.ntuple import write_ntuple
    from hepdeploy.spec import spec_from_dict

    made = {}
    for name, n, generated in (("jet_mlp", n_flat, 20_000), ("particlenet", n_jagged, 10_000)):
        net = get_network(name)
        layout = root_layout(name)
        started = time.perf_counter()
        arrays = _tile(net.generate(min(n, generated), seed=1).arrays(), n)
        path = folder / f"{name}.root"
        write_ntuple(path, ROOT_TREE, ntuple_branches(layout, net, arrays))
        (folder / f"{name}_preprocess.json").write_text(json.dumps(preprocess_json(layout, net)))
        spec = spec_dict(net, net.flavours[0], name, f"{name}{net.model_suffix(net.flavours[0])}")
        spec["data"] = data_block(layout, net, name, None)
        made[name] = {"spec": spec_from_dict(spec, base_dir=folder), "path": path, "events": n,
                      "size_mb": path.stat().st_size / 1e6, "write_s": time.perf_counter() - started}
    return made


def time_read(spec: Any, path: Path, data: Any, repeats: int, convention: str | None = None) -> tuple[float, dict]:
    from hepdeploy.data import read_root_events

    def read() -> dict:
        return read_root_events(path, list(spec.inputs), data, convention=convention)

    arrays = read()  # warm-up: imports, file cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return statistics.median(times), arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flat", type=int, default=200_000, help="events in the flat (jet MLP) ntuple")
    parser.add_argument("--jagged", type=int, default=50_000, help="events in the jagged (ParticleNet) ntuple")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hepdeploy-root-read-") as tmp:
        files = write_files(Path(tmp), args.flat, args.jagged)
        mlp, pn = files["jet_mlp"], files["particlenet"]
        raw_pn = pn["spec"].data.model_copy(update={"preprocess": None, "inputs": {
            name: mapping.model_copy(update={"length": 50 if name.startswith("pf") else 5})
            if mapping.branches else mapping for name, mapping in pn["spec"].data.inputs.items()}})
        cases = [
            ("jet MLP: flat, 16 scalar branches -> input_1 [n, 16]", mlp, mlp["spec"].data, None),
            ("ParticleNet: jagged PFCands/SV -> 6 padded inputs, raw (no preprocess.json)", pn, raw_pn, None),
            ("ParticleNet: jagged + preprocess.json, cmssw convention", pn, pn["spec"].data, "cmssw"),
            ("ParticleNet: jagged + preprocess.json, weaver convention", pn, pn["spec"].data, "weaver"),
        ]
        rows = []
        for label, made, data, convention in cases:
            seconds, arrays = time_read(made["spec"], made["path"], data, args.repeats, convention)
            names = {t.name for t in made["spec"].inputs}
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items() if k in names)
            rows.append((label, made["events"], made["size_mb"], seconds, made["events"] / seconds, shapes))
            print(f"{label}: {made['events'] / seconds:,.0f} events/s", file=sys.stderr)
    total = time.perf_counter() - started

    command = "`.venv/bin/python benchmarks/root_read.py" + (
        "" if (args.flat, args.jagged, args.repeats) == (200_000, 50_000, 3)
        else f" --flat {args.flat} --jagged {args.jagged} --repeats {args.repeats}") + "`"
    lines = [
        "# Reading ROOT ntuples through the spec's data mapping",
        "",
        f"Command: {command}, {date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{total:.0f} s in all. `hepdeploy.data.read_root_events` on a whole file (inputs, one-hot labels, "
        f"Jet_pt/Jet_eta), median of {args.repeats} reads after a warm-up read (file in the page cache); "
        "uproot reads in chunks of 100,000 entries.",
        "",
        "| case | events | file (MB) | read (s) | events/s |",
        "|---|---|---|---|---|",
    ]
    for label, events, size, seconds, rate, _ in rows:
        lines.append(f"| {label} | {events:,} | {size:.1f} | {seconds:.2f} | {rate:,.0f} |")
    lines += ["", "Tensors read: " + "; ".join(f"{r[0].split(':')[0]}: {r[5]}" for r in rows[:2]) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
