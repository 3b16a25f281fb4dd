#!/usr/bin/env python3
"""Writes link/hot-text.ld: the functions a message runs through, laid out
together at the front of the binary's code, in an order that spreads each
workload's cache lines evenly over the instruction cache's sets.

Why: a message's code is spread over a 12 MB binary, and on a CPU whose
instruction cache has few ways (AMD Zen 1: 64 KiB, 4-way) its lines evict
one another even where the whole path would fit. Put together in the order
the functions come, the TLS echo's 660 lines still spread over some 300
KiB and landed five and six on a set here and there (callgrind's
simulation: 109 misses a message, against the tokio-rustls floor's 19).
Placed set by set, with a gap where it helps, none is asked for more than
four: 24 misses a message.

Usage, from the repository's top, with a release build and callgrind
profiles of it (`valgrind --tool=callgrind --dump-instr=yes`, zeroed after
a warm-up and dumped after N messages; link/profile.sh makes them):

    python3 link/hot_text.py target/release/tcpscript tls.out.1:5000 tcp.out.1:5000 udp.out.1:2000

Each profile names how many messages it measured: an instruction run at
least once every other message is hot. The patterns leave out the hash Rust
puts at the end of each symbol, so they keep matching after unrelated
changes and in `cargo bench`'s build; a function renamed or gone simply
drops out of the layout. The placement is exact for the build profiled: a
change to a function inside the section moves what follows it, which then
falls back to being merely together until the script is made again.
"""

import bisect
import collections
import glob
import re
import subprocess
import sys


def hot_addresses(path, binary_name, messages):
    """Instruction address -> executions, for instructions of the binary
    run at least every other message."""
    positions, obj, pos, skip = 1, None, 0, False
    names, counts = {}, collections.Counter()

    def name(text):
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if not m:
            return text
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), text)

    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("positions:"):
            positions = len(line.split()) - 1
        elif line.startswith("ob="):
            obj = name(line[3:])
        elif line.startswith("cob="):
            name(line[4:])
        elif line.startswith("calls="):
            skip = True
        elif line and line[0] in "0123456789+-*":
            first = line.split()[0]
            if first.startswith("0x"):
                pos = int(first, 16)
            elif first[0] in "+-":
                step = first[1:]
                step = int(step, 16) if step.startswith("0x") else int(step)
                pos = pos + step if first[0] == "+" else pos - step
            if skip:
                skip = False
                continue
            values = line.split()[positions:]
            if values and obj and obj.endswith(binary_name) and values[0].isdigit():
                if int(values[0]) * 2 >= messages:
                    counts[pos] += int(values[0])
    return counts


def symbols(binary):
    table = []
    out = subprocess.run(["nm", "-n", "-S", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            table.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return table


def assembly_objects():
    """For ring's assembly objects, whose code is one `.text` section rather
    than a section per function: symbol -> object, and object ->
    (alignment, size, {symbol: offset}) of that section."""
    members, objects = {}, {}
    for archive in glob.glob("target/release/build/ring-*/out/libring_core_*_.a"):
        out = subprocess.run(["nm", "-A", archive], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r".*:([^:]+\.o):(\S*) [tT] (\S+)$", line)
            if m and m.group(1).endswith("-elf.o"):
                name = re.sub(r"^[0-9a-f]+-", "*-", m.group(1))
                members[m.group(3)] = name
                objects.setdefault(name, [0, 0, {}])[2][m.group(3)] = int(m.group(2), 16)
        out = subprocess.run(["readelf", "-SW", archive], capture_output=True, text=True).stdout
        name = None
        for line in out.splitlines():
            m = re.match(r"File: .*\(([^)]+\.o)\)$", line)
            if m:
                name = re.sub(r"^[0-9a-f]+-", "*-", m.group(1))
            fields = line.replace("[ ", "[").split()
            if name in objects and len(fields) > 10 and fields[1] == ".text":
                objects[name][0] = int(fields[10])
                objects[name][1] = int(fields[5], 16)
    return members, objects


def stem(symbol):
    """The symbol without what changes from build to build: Rust's hash and
    the number LTO gives a local copy (`.1371`)."""
    return re.sub(r"(17h[0-9a-f]{16}E)?(\.llvm)?(\.\d+)*$", "", symbol)


def pattern(symbol, members):
    if symbol in members:
        return f"*:{members[symbol]}(.text)"
    # `$` is the linker script's own; `?` matches it.
    return "*(.text." + stem(symbol).replace("$", "?") + "*)"


# The instruction cache the order is made for: AMD Zen 1's, 64 KiB in 4
# ways of 64-byte lines, so 256 sets; an address's set is its line number
# modulo 256. A set asked for more than 4 lines in a message's run loses
# one each time, however small the rest of the code is.
LINE, SETS, WAYS = 64, 256, 4
# How far ahead of the next function in the base order the placement may
# look for one that fits the sets better, and the widest gap it may leave
# before one: the placement is greedy, and which of these does best
# differs from one set of profiles to the next, so it tries them all.
LOOKAHEADS = (20, 40, 80)
MAX_GAPS = (8 * LINE, 16 * LINE, 32 * LINE, 64 * LINE)
# What LLVM aligns a function to on x86_64 (and the section each sits in).
FUNCTION_ALIGN = 16


def glob_regex(glob):
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob))


def units(patterns, table, objects):
    """What the linker puts where for each pattern, in order: an input
    section goes to the first pattern that takes it. Each unit is its
    alignment, its size and [(offset, symbol)]."""
    by_name = {entry[2]: entry for entry in table}
    taken, out = set(), {}
    for p in patterns:
        if p.startswith("*:"):
            # One assembly object's `.text`, as it is.
            align, size, offsets = objects[p[2:-len("(.text)")]]
            out[p] = (align, size, [(o, by_name[s]) for s, o in offsets.items() if s in by_name])
            continue
        regex = glob_regex(p[len("*(.text.") : -1])
        offset, placed = 0, []
        for entry in table:
            if entry[2] not in taken and regex.fullmatch(entry[2]):
                taken.add(entry[2])
                offset = -(-offset // FUNCTION_ALIGN) * FUNCTION_ALIGN
                placed.append((offset, entry))
                offset += entry[1]
        out[p] = (FUNCTION_ALIGN, offset, placed)
    return out


def place(patterns, layout, hot, lookahead, max_gap):
    """Orders the patterns, with gaps where they help, so that no workload
    asks a cache set for more lines than it has ways: from the base order,
    the next unit placed is the one among the next few that adds the
    fewest lines to full sets, after a gap of a few lines if that is
    better, the one with more hot lines first among equals. Returns
    [(gap in bytes, pattern)] and, per workload, how many lines sit in sets
    past their ways and how many sets are just full."""

    def lines_at(p, base):
        out = [set() for _ in hot]
        for offset, entry in layout[p][2]:
            for i, offsets in enumerate(hot):
                out[i].update((base + offset + o) // LINE for o in offsets.get(entry[2], ()))
        return out

    def over(k):
        # A set past its ways loses every line in it at every message; a
        # set just full loses one to the first line from elsewhere (the C
        # library, code run every few messages), so it costs a little too.
        return 10 * k if k > WAYS else 1 if k == WAYS else 0

    taken = [set() for _ in hot]
    full = [collections.Counter() for _ in hot]
    remaining, order, address = list(patterns), [], 0
    while remaining:
        best = None
        for rank, p in enumerate(remaining[:lookahead]):
            align = layout[p][0]
            start = -(-address // align) * align
            for gap in range(0, max_gap + 1, LINE):
                lines = lines_at(p, start + gap)
                added = 0
                for i, new in enumerate(lines):
                    sets = collections.Counter(line % SETS for line in new - taken[i])
                    added += sum(over(full[i][s] + k) - over(full[i][s]) for s, k in sets.items())
                score = (added, gap, rank - 0.1 * sum(len(x) for x in lines))
                if best is None or score < best[0]:
                    best = (score, p, start, gap, lines)
                if added == 0:
                    break
        _, p, start, gap, lines = best
        for i, new in enumerate(lines):
            full[i].update(line % SETS for line in new - taken[i])
            taken[i] |= new
        remaining.remove(p)
        order.append((gap, p))
        address = start + gap + layout[p][1]
    return order, [
        (sum(v for v in c.values() if v > WAYS), sum(1 for v in c.values() if v == WAYS)) for c in full
    ]


def main():
    binary, profiles = sys.argv[1], sys.argv[2:]
    table = symbols(binary)
    starts = [s[0] for s in table]
    weight = collections.defaultdict(dict)
    hot = []
    for spec in profiles:
        path, messages = spec.rsplit(":", 1)
        messages = int(messages)
        offsets = collections.defaultdict(set)
        for address, count in hot_addresses(path, binary.split("/")[-1], messages).items():
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and table[i][0] <= address < table[i][0] + table[i][1]:
                symbol = table[i][2]
                weight[symbol][path] = weight[symbol].get(path, 0) + count / messages
                offsets[symbol].add(address - table[i][0])
        hot.append(offsets)
    members, objects = assembly_objects()
    # The base order: each workload is given a place on a line, in the
    # order the profiles are given; a function goes to the mean of the
    # places of the workloads it is hot in. Each workload's functions then
    # sit together, those it shares with its neighbours at the ends it
    # shares. (Sorted by how many workloads share a function, instead, the
    # TLS echo's spread over 300 KiB.)
    rank = {path: i for i, path in enumerate(spec.rsplit(":", 1)[0] for spec in profiles)}
    order = sorted(
        weight,
        key=lambda s: (
            sum(rank[p] for p in weight[s]) / len(weight[s]),
            -sum(weight[s].values()),
        ),
    )
    # A generic function's instances share a name without their hashes,
    # and a pattern of that name takes them all, cold ones too (tokio's
    # task poll has a dozen). The hashes are left out all the same: they
    # differ between `cargo build` and `cargo bench` (whose dev-dependencies
    # turn on more features of shared crates) and between compilers.
    patterns, seen = [], set()
    for symbol in order:
        p = pattern(symbol, members)
        if p not in seen:
            seen.add(p)
            patterns.append(p)
    layout = units(patterns, table, objects)
    tries = [place(patterns, layout, hot, n, gap) for n in LOOKAHEADS for gap in MAX_GAPS]
    patterns, overfull = min(tries, key=lambda t: sum(10 * past + full for past, full in t[1]))
    with open("link/hot-text.ld", "w") as f:
        f.write("/* Generated by link/hot_text.py: the code a message runs through, together\n")
        f.write("   at the front of the binary (see that script and README \"Code layout\"). */\n")
        f.write(f"SECTIONS\n{{\n  .text.hot : ALIGN({LINE})\n  {{\n")
        for gap, p in patterns:
            if gap:
                f.write(f"    . += {gap};\n")
            f.write(f"    {p}\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    size = sum(gap + layout[p][1] for gap, p in patterns)
    print(
        f"{len(patterns)} patterns from {len(order)} functions, {size // 1024} KiB; "
        f"lines in sets past {WAYS} ways and sets just full, per profile: {overfull}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
