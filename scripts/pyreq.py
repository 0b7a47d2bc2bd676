"""pyreq.py: the Python modules a script needs, checked before it does anything long.

    from pyreq import require
    require("torch", "transformers", "peft")   # one line naming what is missing, exit 1

A script run with --check-deps checks and exits (0 when everything is importable), so `make
bench` and `make fixtures` can find a missing module before minutes of work rather than after.
The modules come from PyPI (scripts/requirements.txt): they make reference fixtures and
comparisons, and the C programs never need them.
"""
import importlib.util
import os
import sys

# import name -> PyPI name where they differ
PIP_NAME = {"PIL": "pillow"}


def require(*modules):
    script = os.path.basename(sys.argv[0]) or "python"
    missing = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(m)
    if missing:
        pip = " ".join(PIP_NAME.get(m, m) for m in missing)
        print(f"{script}: missing Python modules: {', '.join(missing)} (with {sys.executable}); "
              f"pip install -r scripts/requirements.txt, or only: pip install {pip} "
              f"(a virtual environment keeps them apart: python3 -m venv .venv && . .venv/bin/activate)",
              file=sys.stderr)
        sys.exit(1)
    if "--check-deps" in sys.argv[1:]:
        print(f"{script}: every module it needs is importable ({', '.join(modules)})")
        sys.exit(0)
