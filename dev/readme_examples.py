#!/usr/bin/env python3
"""README's example outputs, made by the programs themselves so they cannot go stale.

A code block in README.md right after a line
    <!-- readme_examples: COMMAND -->
holds COMMAND's output; one right after
    <!-- readme_examples: session -->
holds lines "$ COMMAND", each followed by that command's output. COMMAND is one of the repository's
programs (./train_llama, ./tokenize, ./mst_hf) with its arguments, run from the repository root.

    python3 dev/readme_examples.py          # check: one line per block, then "N passed, N failed" (make test)
    python3 dev/readme_examples.py --update # rewrite the blocks in README.md with the programs' output
"""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKER = re.compile(r"^<!-- readme_examples: (.*) -->$")
PROGRAMS = ("./train_llama", "./tokenize", "./mst_hf")


def output_of(command):
    """the program's stdout and stderr, as a user sees them (its exit status is the example's business)"""
    args = shlex.split(command)
    if not args or args[0] not in PROGRAMS:
        raise SystemExit(f"error: README.md: example command {command!r} is not one of {', '.join(PROGRAMS)}")
    run = subprocess.run(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return run.stdout.splitlines()


def generated_block(marker, old_block):
    """the lines a block should hold: the command's output, or each "$ " line of a session and its output"""
    if marker != "session":
        return output_of(marker)
    lines = []
    for line in old_block:
        if line.startswith("$ "):
            lines.append(line)
            lines.extend(output_of(line[2:]))
    return lines


def main():
    update = sys.argv[1:] == ["--update"]
    if sys.argv[1:] not in ([], ["--update"]):
        raise SystemExit("usage: python3 dev/readme_examples.py [--update]")
    with open(README) as f:
        lines = f.read().split("\n")
    passed = failed = 0
    out, i = [], 0
    while i < len(lines):
        out.append(lines[i])
        match = MARKER.match(lines[i])
        i += 1
        if not match:
            continue
        if i >= len(lines) or lines[i] != "```":
            raise SystemExit(f"error: README.md: line {i}: a readme_examples marker not followed by a ``` block")
        end = lines.index("```", i + 1)
        old_block, new_block = lines[i + 1:end], generated_block(match.group(1), lines[i + 1:end])
        if old_block == new_block:
            passed += 1
        elif not update:
            failed += 1
            print(f"FAIL: README.md line {i + 2}: the block after '{lines[i - 1]}' differs from the output now "
                  f"(python3 dev/readme_examples.py --update rewrites it):")
            for old, new in zip(old_block + [""] * len(new_block), new_block + [""] * len(old_block)):
                if old != new:
                    print(f"  README: {old}\n  now:    {new}")
                    break
        out.extend(["```"] + new_block + ["```"])
        i = end + 1
    if update:
        with open(README, "w") as f:
            f.write("\n".join(out))
        print(f"README.md: {passed} example block(s) already current, the others rewritten")
        return 0
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
