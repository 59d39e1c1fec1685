#!/usr/bin/env python3
"""One process's CPU samples from a system-wide `perf record --call-graph dwarf`, by
what they were doing (benches/results/small-floor.md).

    perf script -i perf.data -F pid,tid,comm,time,ip,sym > perf.txt
    fold2.py perf.txt PID [--start T] [--end T] (--cat | --self N | --incl N) [--under FRAME]

--cat: each sample counted once, under the first category (in the order below) one
of its frames matches; --self N: the N commonest leaf frames; --incl N: the N frames
found in most samples; --under FRAME: only samples with a frame containing FRAME."""
import argparse
import collections
import re

CATEGORIES = [
    ('verify (after caught up)', 'folder::verify'),
    ('writing the files', 'replay::file::write_file'),
    ('the log\'s appends', 'log::EventLog::append'),
    ('receiving chunks into packs', 'pack::PackWriter'),
    ('the chunk store\'s durability point', 'ChunkStore::sync'),
    ('the rest of the chunk store', 'chunk_store'),
    ('replay\'s check and bookkeeping', 'standin_engine::replay'),
    ('the folder index', 'folder::index'),
    ('the rest of the log', 'standin_engine::log'),
    ('sled\'s own threads and epochs', 'sled::'),
    ('gRPC receive', ('h2::', 'tonic::', 'prost::', 'hyper::')),
    ('the service (pull and fetch loops, ...)', 'standin::'),
    ('the rest of the engine', 'standin_engine'),
    ('tokio\'s runtime', 'tokio::'),
]

HEAD = re.compile(r'^\s*(.*?)\s+(\d+)/(\d+)\s+([\d.]+):')


def samples(path):
    current = None
    with open(path, errors='replace') as lines:
        for line in lines:
            match = HEAD.match(line)
            if match:
                if current:
                    yield current
                current = (match.group(2), float(match.group(4)), [])
            elif current and line.strip():
                parts = line.strip().split(None, 1)
                current[2].append(parts[1] if len(parts) > 1 else parts[0])
    if current:
        yield current


def short(frame):
    return re.sub(r'::h[0-9a-f]{16}$', '', frame)[:140]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('file')
    parser.add_argument('pid')
    parser.add_argument('--start', type=float)
    parser.add_argument('--end', type=float)
    parser.add_argument('--self', type=int)
    parser.add_argument('--incl', type=int)
    parser.add_argument('--cat', action='store_true')
    parser.add_argument('--under')
    args = parser.parse_args()
    chosen = [s for s in samples(args.file) if s[0] == args.pid
              and (args.start is None or s[1] >= args.start)
              and (args.end is None or s[1] < args.end)
              and (not args.under or any(args.under in f for f in s[2]))]
    total = len(chosen)
    print(f'{total} samples')
    if total == 0:
        return
    counts = collections.Counter()
    if args.self:
        counts.update(short(s[2][0]) if s[2] else '?' for s in chosen)
        top = counts.most_common(args.self)
    elif args.incl:
        for s in chosen:
            counts.update(set(map(short, s[2])))
        top = counts.most_common(args.incl)
    else:
        for s in chosen:
            name = 'unattributed'
            for label, patterns in CATEGORIES:
                patterns = patterns if isinstance(patterns, tuple) else (patterns,)
                if any(p in f for f in s[2] for p in patterns):
                    name = label
                    break
            counts[name] += 1
        top = counts.most_common()
    for name, count in top:
        print(f'{100 * count / total:5.1f}% {count:6d} {name}')


if __name__ == '__main__':
    main()
