"""Reading results.csv files: the standard library only, so the GPU kit's summary runs without importing torch
(which takes longer than the summary's budget on the GPU box)."""
import csv


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
