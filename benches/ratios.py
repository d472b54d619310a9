#!/usr/bin/env python3
"""Prints the hot-path table (ns/op and the goal ratios) from criterion's last run.

Usage: cargo bench --bench hot_path && python3 benches/ratios.py
"""
import json, os, sys

root = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")

def ns(group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None

rows = [
    ("baseline", "atomic_fetch_add"), ("baseline", "hdrhistogram_record"),
    ("baseline", "quanta_now"), ("baseline", "std_instant_now"),
    ("shoal", "counter_handle"), ("shoal", "counter_facade_handle"),
    ("shoal", "histogram_record"), ("shoal", "histogram_facade_record"),
    ("shoal", "gauge_set"), ("shoal", "counter_macro"), ("shoal", "histogram_macro"),
    ("facade_floor", "counter_macro_noop"), ("facade_floor", "counter_macro_arc"),
    ("facade_floor", "histogram_macro_noop"), ("facade_floor", "histogram_macro_arc"),
    ("metrics_exporter_prometheus", "counter_handle"), ("metrics_exporter_prometheus", "histogram_record"),
    ("metrics_exporter_prometheus", "counter_macro"), ("metrics_exporter_prometheus", "histogram_macro"),
    ("prometheus", "counter_handle"), ("prometheus", "histogram_record"), ("prometheus", "counter_with_label_values"),
    ("prometheus_client", "counter_handle"), ("prometheus_client", "histogram_record"),
    ("two_threads_one_series", "atomic_fetch_add"), ("two_threads_one_series", "shoal_counter"),
    ("two_threads_one_series", "shoal_histogram"), ("two_threads_one_series", "metrics_exporter_prometheus_counter"),
    ("one_thread_same_harness", "shoal_counter"), ("one_thread_same_harness", "shoal_histogram"),
    ("tight_loop", "hdrhistogram_record"), ("tight_loop", "shoal_histogram_record"), ("tight_loop", "floor_mapping_into_flat_array"),
]
print("| group | operation | ns/op |\n|---|---|---|")
for g, b in rows:
    v = ns(g, b)
    print(f"| {g} | {b} | {'-' if v is None else f'{v:.2f}'} |")

def ratio(label, a, b, goal):
    va, vb = ns(*a), ns(*b)
    if va is None or vb is None:
        print(f"| {label} | missing | {goal} |"); return
    r = va / vb
    print(f"| {label} | {r:.3f} | {goal} |")

print("\n| goal | measured ratio | target |\n|---|---|---|")
ratio("counter handle / shared fetch_add (2 threads)", ("shoal", "counter_facade_handle"), ("two_threads_one_series", "atomic_fetch_add"), "<= 0.5")
ratio("counter handle / fetch_add (1 thread)", ("shoal", "counter_facade_handle"), ("baseline", "atomic_fetch_add"), "<= 0.5")
ratio("histogram record / hdrhistogram record", ("shoal", "histogram_facade_record"), ("baseline", "hdrhistogram_record"), "<= 1.0")
ratio("histogram record / hdrhistogram record, tight loop", ("tight_loop", "shoal_histogram_record"), ("tight_loop", "hdrhistogram_record"), "<= 1.0")
ratio("floor: shoal's mapping into a flat array / hdrhistogram, tight loop", ("tight_loop", "floor_mapping_into_flat_array"), ("tight_loop", "hdrhistogram_record"), "(the cells' share is the rest)")
ratio("2 threads one series / 1 thread (counter)", ("two_threads_one_series", "shoal_counter"), ("one_thread_same_harness", "shoal_counter"), "<= 1.2")
ratio("2 threads one series / 1 thread (histogram)", ("two_threads_one_series", "shoal_histogram"), ("one_thread_same_harness", "shoal_histogram"), "<= 1.2")
ratio("counter! path / metrics-exporter-prometheus counter! path", ("shoal", "counter_macro"), ("metrics_exporter_prometheus", "counter_macro"), "<= 0.25")
ratio("histogram! path / metrics-exporter-prometheus histogram! path", ("shoal", "histogram_macro"), ("metrics_exporter_prometheus", "histogram_macro"), "<= 0.25")
ratio("floor: counter! with a stub returning a shared Arc / mep", ("facade_floor", "counter_macro_arc"), ("metrics_exporter_prometheus", "counter_macro"), "(what no recorder can beat)")
ratio("floor: histogram! with a stub returning a shared Arc / mep", ("facade_floor", "histogram_macro_arc"), ("metrics_exporter_prometheus", "histogram_macro"), "(what no recorder can beat)")
