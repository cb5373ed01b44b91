#!/usr/bin/env python3
"""Keeps a committed corpus small: the few inputs that cover the most.

`cargo fuzz cmin` keeps every input that adds a feature, which after a long run is still
hundreds of files. This reads the control file of a libFuzzer set-cover merge (which
lists, for each input, every feature it reaches) and copies into OUT_DIR the inputs a
greedy set cover picks, most new edges first (the smaller input on a tie), until MAX are
picked or none adds anything. An edge is a feature without its low three bits (libFuzzer
keeps there how often the edge ran, which a regression corpus need not keep).

    fuzz/target/x86_64-unknown-linux-gnu/release/TARGET -set_cover_merge=1 \
        -merge_control_file=/tmp/TARGET.ctl /tmp/empty CORPUS_DIR...
    python3 fuzz/pick.py /tmp/TARGET.ctl fuzz/corpus/TARGET --max 40
"""

import argparse
import hashlib
import pathlib
import shutil


def read_control(path, by):
    """The inputs of a set-cover merge's control file, and the edges (or features) of each."""
    lines = pathlib.Path(path).read_text().splitlines()
    count = int(lines[0])
    files = lines[2 : 2 + count]
    shift = 3 if by == "edges" else 0
    reached = {}
    for line in lines[2 + count :]:
        parts = line.split()
        if parts and parts[0] == "FT":
            reached[int(parts[1])] = {int(feature) >> shift for feature in parts[2:]}
    return files, reached


def pick(files, features, most):
    covered, chosen = set(), []
    sizes = {i: pathlib.Path(files[i]).stat().st_size for i in features}
    while len(chosen) < most:
        best = max(features, key=lambda i: (len(features[i] - covered), -sizes[i]), default=None)
        if best is None or not features[best] - covered:
            break
        covered |= features.pop(best)
        chosen.append(files[best])
    return chosen, len(covered)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("control_file")
    parser.add_argument("out_dir")
    parser.add_argument("--max", type=int, default=40)
    parser.add_argument("--by", choices=["edges", "features"], default="edges")
    args = parser.parse_args()
    files, reached = read_control(args.control_file, args.by)
    total = len(set().union(*reached.values()))
    chosen, covered = pick(files, reached, args.max)
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = set()
    for path in chosen:
        data = pathlib.Path(path).read_bytes()
        name = hashlib.sha1(data).hexdigest()
        if name not in names:
            names.add(name)
            shutil.copyfile(path, out / name)
    print(f"{len(names)} inputs reaching {covered} of {total} {args.by}, into {out}")


if __name__ == "__main__":
    main()
