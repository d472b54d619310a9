#!/usr/bin/env python3
"""Before/after of one criterion bench: BASE (a git revision) against the
working tree, in alternating rounds, so that both see the same machine.

Usage: python3 benches/ab.py BASE BENCH [FILTER] [ROUNDS]
  e.g. python3 benches/ab.py 8ec526c hot_path 'shoal/|baseline/' 5

BASE is checked out in a temporary git worktree and built in its own target
dir (cargo shares build-script output between same-named path packages in
one target dir, so two trees must not share one). Reports, per benchmark,
the median and the minimum of the per-round criterion medians on each side
and their ratios (after / before). On a VM whose timings are bimodal, the
minimum is the steadier figure; a peer benchmark that is the same code on
both sides (hdrhistogram, fetch_add) shows how much the machine alone moves.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile

def run(cmd, cwd, env):
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)

def medians(target):
    """criterion's latest median (ns) of every benchmark under target/criterion."""
    out = {}
    root = os.path.join(target, "criterion")
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) == "new" and "estimates.json" in files:
            with open(os.path.join(dirpath, "estimates.json")) as f:
                name = os.path.relpath(os.path.dirname(dirpath), root)
                out[name] = json.load(f)["median"]["point_estimate"]
    return out

def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    base, bench = sys.argv[1], sys.argv[2]
    filt = sys.argv[3] if len(sys.argv) > 3 else ""
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    here = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    scratch = tempfile.mkdtemp(prefix="shoal-ab-")
    base_tree = os.path.join(scratch, "base")
    sides = {"before": (base_tree, os.path.join(scratch, "target-before")),
             "after": (here, os.path.join(scratch, "target-after"))}
    try:
        subprocess.run(["git", "worktree", "add", "--detach", base_tree, base], cwd=here, check=True, stdout=subprocess.DEVNULL)
        seen = {"before": {}, "after": {}}
        for side, (tree, target) in sides.items():
            env = dict(os.environ, CARGO_TARGET_DIR=target)
            print(f"building {side} ({tree})", file=sys.stderr)
            run(["cargo", "bench", "-q", "--bench", bench, "--no-run"], tree, env)
        for r in range(rounds):
            for side, (tree, target) in sides.items():
                print(f"round {r + 1}/{rounds}: {side}", file=sys.stderr)
                shutil.rmtree(os.path.join(target, "criterion"), ignore_errors=True)
                run(["cargo", "bench", "-q", "--bench", bench, "--", filt], tree, dict(os.environ, CARGO_TARGET_DIR=target))
                for name, ns in medians(target).items():
                    seen[side].setdefault(name, []).append(ns)
        print(f"{'benchmark (ns)':48} {'before med/min':>16} {'after med/min':>16} {'ratio med':>9} {'ratio min':>9}")
        for name in sorted(set(seen["before"]) & set(seen["after"])):
            b, a = seen["before"][name], seen["after"][name]
            mb, ma = statistics.median(b), statistics.median(a)
            print(f"{name:48} {mb:7.2f}/{min(b):7.2f}  {ma:7.2f}/{min(a):7.2f}  {ma / mb:9.2f} {min(a) / min(b):9.2f}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(scratch, ignore_errors=True)

if __name__ == "__main__":
    main()
