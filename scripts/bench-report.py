#!/usr/bin/env python3
"""Regenerates BENCHMARKS.md from the last `cargo bench` run:
criterion's medians (target/criterion/*/*/*/new/estimates.json) and the
multi-process measures (target/shmkv-bench/scaling.json).

Usage: cargo bench --bench compare && cargo bench --bench scaling &&
       bash scripts/instr-counts.sh && python3 scripts/bench-report.py
"""
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRIT = os.path.join(ROOT, "target", "criterion")
LOOKUPS = 4096


def median_ns(group, function, param=None):
    parts = [CRIT, group, function] + ([param] if param else []) + ["new", "estimates.json"]
    path = os.path.join(*parts)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def get_ns(function, param):
    v = median_ns("get", function, param)
    return None if v is None else v / LOOKUPS


def fmt(x, unit="ns"):
    return "n/a" if x is None else f"{x:,.1f} {unit}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} vCPU, Linux {platform.release()}"


def main():
    scaling_path = os.path.join(ROOT, "target", "shmkv-bench", "scaling.json")
    sc = json.load(open(scaling_path)) if os.path.exists(scaling_path) else {}
    rows = []

    def row(measure, target, figure, ok, why=""):
        verdict = "n/a" if ok is None else ("met" if ok else "not met")
        rows.append((measure, target, figure, verdict + (f": {why}" if why else "")))

    hot = "1000x64B"
    ga = get_ns("shmkv_get_archived", hot)
    gr = get_ns("shmkv_get_ref", hot)
    gu = get_ns("shmkv_get_archived_unchecked", hot)
    st = get_ns("std_hashmap_get", hot)
    r = ratio(ga, st)
    row("hot `get_archived`, 1,000 entries, 16 B keys, 64 B values",
        "≤ 1.0× std HashMap and ≤ 30 ns",
        f"{fmt(ga)} validated ({fmt(gu)} unchecked, {fmt(gr)} raw `get_ref`) vs std {fmt(st)}: **{r:.2f}×**" if r else "n/a",
        None if r is None else (r <= 1.0 and ga <= 30),
        "" if r is None or (r <= 1.0 and ga <= 30) else "the validated read adds rkyv's bytecheck of the archive and the archived Vec's relative pointer; the raw lookup (`get_ref`) is below std and the unchecked read is the lookup plus rkyv's root access")

    cold = "1000000x64B"
    sh, st1 = get_ns("shmkv_get_ref", cold), get_ns("std_hashmap_get", cold)
    r = ratio(sh, st1)
    row("cold get, 1,000,000 entries, uniform random keys", "≤ 0.8× std HashMap",
        f"{fmt(sh)} vs {fmt(st1)}: **{r:.2f}×**" if r else "n/a", None if r is None else r <= 0.8,
        "" if r is None or r <= 0.8 else "one slot line + one arena line per hit, as the std map's bucket + heap value; both are DRAM-bound")

    lm = get_ns("lmdb_get", cold)
    r = ratio(lm, sh)
    row("LMDB (`heed`, /dev/shm) random get, 1,000,000 entries", "shmkv ≥ 3× faster",
        f"LMDB {fmt(lm)} vs shmkv {fmt(sh)}: **shmkv {r:.1f}× faster**" if r else "n/a", None if r is None else r >= 3)

    for ent in ["1000x64B", "100000x64B"]:
        ms, sk = get_ns("mmap_sync_read_one_key", ent), get_ns("shmkv_get_ref", ent)
        r = ratio(sk, ms)
        row(f"mmap-sync reading one key of an archived map ({ent.split('x')[0]} entries)", "shmkv ≤ 1.0× its time",
            f"shmkv {fmt(sk)} vs mmap-sync {fmt(ms)}: **{r:.2f}×**" if r else "n/a", None if r is None else r <= 1.0)

    if sc:
        s_scale = sc["shmkv_2"] / sc["shmkv_1"]
        std_scale = sc["std_2"] / sc["std_1"]
        r = s_scale / std_scale
        row("2 reader processes vs 1", "scaling ≥ 0.95× that of std HashMaps",
            f"shmkv {sc['shmkv_1']/1e6:.1f} → {sc['shmkv_2']/1e6:.1f} M reads/s ({s_scale:.2f}×), std {sc['std_1']/1e6:.1f} → {sc['std_2']/1e6:.1f} M ({std_scale:.2f}×): **{r:.2f}**",
            r >= 0.95)
        r1 = sc["shmkv_1_writer_10k"] / sc["shmkv_1"]
        r2 = sc["shmkv_2_writer_10k"] / sc["shmkv_2"]
        row("readers while one writer does 10,000 writes/s", "≥ 0.9× the read throughput without",
            f"1 reader: **{r1:.2f}×**; 2 readers (writer shares the 2 cores): {r2:.2f}×", r1 >= 0.9,
            "" if r1 >= 0.9 else "")
        ov = sc["overhead_design_load"]
        ov1 = sc["overhead_1m"]
        row("memory overhead per entry beyond key and value bytes", "≤ 64 B at the default load factor",
            f"**{ov:.1f} B** at the design load (7/8 of the slots); {ov1:.1f} B for `capacity(1_000_000)` ({sc['slots_1m']:,} slots, 48% full)",
            ov <= 64)

    sem = median_ns("write", "semaphore_acquire_release_pair")
    single = median_ns("write", "shmkv_single_insert")
    batch = median_ns("write", "shmkv_batch_1000_inserts")
    per = None if batch is None else batch / 1000
    if sem and single and per:
        r = single / (sem + per)
        row("single insert (uncontended)", "≤ 1.3× semaphore pair + the insert's data work",
            f"{fmt(single/1000, 'µs')} vs pair {fmt(sem/1000, 'µs')} + data {fmt(per)}: **{r:.2f}×**", r <= 1.3,
            "" if r <= 1.3 else "per write: serialise a redo log, plan in a BTreeMap, HashMap index; see DESIGN.md")
    row("batch of 1,000 inserts in one `write`", "≤ 300 ns per insert", f"**{fmt(per)}** per insert", None if per is None else per <= 300)

    out = ["# Benchmarks", "",
           "Generated by `scripts/bench-report.py` from the last run of",
           "`cargo bench --bench compare` (criterion, medians), `cargo bench --bench scaling`",
           "(real processes, median of 3 trials) and `scripts/instr-counts.sh` (callgrind).",
           "Do not edit by hand.", "",
           f"Machine: {machine()}. Shared and noisy: compare ratios, not absolute figures.", "",
           "Method: every get benchmark does 4,096 lookups per iteration in one fixed pseudo-random",
           "key order, the same for every contender; figures are ns per lookup. Keys are 16 bytes.",
           "LMDB runs in /dev/shm with one read transaction per 4,096 lookups (its best case).",
           "mmap-sync reads its current snapshot (rkyv 0.7 archived HashMap) and looks the key up.",
           "", "| measure | target | result | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out += ["", "## All get medians (ns per lookup)", "", "| benchmark | " + " | ".join(
        ["1000x64B", "100000x16B", "100000x64B", "100000x1024B", "1000000x64B"]) + " |", "|---" * 6 + "|"]
    for fn in ["shmkv_get_ref", "shmkv_get_archived", "shmkv_get_archived_unchecked", "std_hashmap_get", "lmdb_get", "mmap_sync_read_one_key"]:
        cells = [fmt(get_ns(fn, p)) for p in ["1000x64B", "100000x16B", "100000x64B", "100000x1024B", "1000000x64B"]]
        out.append(f"| {fn} | " + " | ".join(cells) + " |")
    ipath = os.path.join(ROOT, "target", "shmkv-bench", "instructions.json")
    if os.path.exists(ipath):
        ic = json.load(open(ipath))
        out += ["", "## Instructions per hot lookup (`scripts/instr-counts.sh`, callgrind)", "",
                "1,000 entries, 16 B keys, 64 B values; the difference between 300,000 and 100,000",
                "lookups divided by 200,000 (setup cancels out). Instruction counts do not depend on",
                "machine noise.", "", "| variant | instructions |", "|---|---|"]
        for k, label in [("get_ref", "shmkv `RawMap::get_ref`"), ("unchecked", "shmkv `get_archived_unchecked`"),
                         ("archived", "shmkv `get_archived` (validated)"), ("std", "std `HashMap::get`")]:
            if k in ic:
                out.append(f"| {label} | {ic[k]} |")
        if all(k in ic for k in ("get_ref", "unchecked", "archived")):
            out += ["", f"The validated read costs {ic['archived'] - ic['unchecked']} instructions more than the",
                    f"unchecked one (rkyv's bytecheck of the archive) and the typed path {ic['unchecked'] - ic['get_ref']} more",
                    "than the raw lookup (key encoding, rkyv root access): that is the gap to the std map in",
                    "the first row of the table; the lookup itself is below std."]
    out += ["", "## What limits each figure", "",
            "- A shmkv hit reads the root's `current` word (one read-mostly line), the probed slot",
            "  (two slots per 64-byte line) and the record (key and value; 1-2 lines for 64 B values).",
            "  It pins the thread (a thread-local lookup, one store and a SeqCst fence) and hashes",
            "  the key with XXH3. No system call, no shared write.",
            "- `get_archived` adds rkyv's bytecheck validation of the archive; `get_archived_unchecked`",
            "  skips it (unsafe).",
            "- The std HashMap uses SipHash and a separate heap allocation per key and per value.",
            "- A write is one semaphore acquire and release (SEM_UNDO), the record copy, a redo log",
            "  (checksummed) and one seqlock write per changed slot.", ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
