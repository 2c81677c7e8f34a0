#!/usr/bin/env python3
"""Makes tch 0.26's C wrapper compile against an older libtorch (the GPU kit's 2.11).

tch 0.26 binds the operators of libtorch 2.13. libtorch 2.11 lacks a few of them, or has them
with other arguments, so torch_api_generated.cpp does not compile there. fastlightgen calls
none of them: this script replaces the body of each such wrapper with an error that names the
operator (reported through tch's usual error path if it were ever called) and leaves every
other wrapper untouched.

usage: stub_missing_ops.py TORCH_API_GENERATED_CPP
"""
import re
import sys

# Operators new in libtorch 2.12/2.13, or whose signature changed since 2.11 (found by
# compiling tch 0.26's wrapper against the torch 2.11.0 wheel's headers).
MISSING = (
    "_flash_attention_forward_no_dropout_inplace",
    "_philox_",  # every _philox_* operator
    "_scaled_dot_product_attention_math_for_mps",
    "_upsample_lanczos2d_aa",  # and its _backward/_out/_vec variants
)

path = sys.argv[1]
src = open(path).read()
func = re.compile(r"^void (atg_\w+)\((.*?)\) \{\n(.*?)^\}\n", re.S | re.M)
stubbed = []


def replace(m):
    name, args, body = m.group(1), m.group(2), m.group(3)
    op = name[len("atg_"):]
    if not any(op.startswith(p) for p in MISSING):
        return m.group(0)
    stubbed.append(op)
    return (
        f"void {name}({args}) {{\n  PROTECT(\n"
        f'    throw std::runtime_error("{op} is not in this libtorch (fastlightgen GPU kit)");\n'
        f"  )\n}}\n"
    )


out = func.sub(replace, src)
if not stubbed:
    sys.exit(f"{path}: none of the expected operators found; is this tch 0.26?")
open(path, "w").write(out)
print(f"stubbed {len(stubbed)} wrappers: {', '.join(sorted(set(stubbed)))}")
