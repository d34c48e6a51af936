#!/usr/bin/env python3
"""Shortens `cryoden bench denoise --json` lines in a log (stdin → stdout) to the figures the docs quote: per
file seconds, Mpixel/s, and per steady-state file the compute thread's phases and the reader/writer busy times.
Other lines pass through unchanged."""
import json
import sys

for line in sys.stdin:
    s = line.strip()
    if not s.startswith("{"):
        sys.stdout.write(line)
        continue
    try:
        d = json.loads(s)
    except ValueError:
        sys.stdout.write(line)
        continue
    if "mpixel_per_s" not in d:
        sys.stdout.write(line)
        continue
    p, m = d["steady_profile"], d["summary"]
    n, files = max(p["images"], 1), max(m["denoised"], 1)
    ms = lambda v, k: f"{1e3 * v / k:.2f}"
    print(
        f"{d['arch']} {d['backend']}: {d['s_per_file']:.4f} s/file, {d['mpixel_per_s']:.1f} Mpixel/s, "
        f"GPU {d['device_mib']} MiB, peak RSS {d['peak_rss_mib']:.0f} MiB | steady ms/file: cut {ms(p['extract_s'], n)} "
        f"upload {ms(p['upload_s'], n)} forward {ms(p['forward_s'], n)} download {ms(p['download_s'], n)} "
        f"place {ms(p['place_s'], n)} direct {p.get('direct', '-')}/{p['images']} | all files ms/file: "
        f"read {ms(m['read_s'], files)} stats {ms(m['stats_s'], files)} write {ms(m['write_s'], files)}"
    )
