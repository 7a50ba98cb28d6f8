"""`python -m rinha.bench k6 --scenario final|preview ...` runs an official scenario against the
whole stack (k6run.py); anything else, including no arguments, runs the microbenchmarks
(micro.py)."""

import sys


def main() -> int:
    if sys.argv[1:2] == ["k6"]:
        from rinha.bench.k6run import main as k6_main

        return k6_main(sys.argv[2:])
    from rinha.bench.micro import main as micro_main

    micro_main(sys.argv[1:])
    return 0


sys.exit(main())
